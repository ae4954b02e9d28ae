"""IIIF documents read as a user's manifests are written: both versions, nested collections,
language maps, HTML in values, odd canvas ids, level-0 sizes and dynamic services."""
import json

import pytest
from helpers import make_image

from featbank.core.errors import BadInput
from featbank.data import iiif
from featbank.data.iiif_static import write_layout


def _manifest3(mid, canvases):
    return {"@context": iiif.PRESENTATION_3, "id": mid, "type": "Manifest",
            "label": {"en": ["M"]}, "items": canvases,
            "metadata": [{"label": {"en": ["collection"]}, "value": {"en": ["prints"]}}]}


def _canvas3(cid, metadata, service=None, width=800, height=600, image=None):
    body = {"id": image or f"{cid}/full.jpg", "type": "Image", "format": "image/jpeg"}
    if service:
        body["service"] = [service]
    return {"id": cid, "type": "Canvas", "label": {"none": [cid]}, "width": width,
            "height": height, "metadata": metadata,
            "items": [{"id": f"{cid}/p", "type": "AnnotationPage", "items": [{
                "id": f"{cid}/a", "type": "Annotation", "motivation": "painting",
                "target": cid, "body": body}]}]}


def test_both_versions_give_the_same_canvases_labels_and_catalogue(tmp_path):
    images = [make_image(tmp_path / f"im{k}.jpg", k, size=(40 + k, 30)) for k in range(3)]
    items = [(p, {"genre": g}) for p, g in zip(images, ["portrait", "landscape", "portrait"])]
    read = {}
    for version in (2, 3):
        path = write_layout(items, tmp_path / f"v{version}", "http://127.0.0.1:9", version=version)
        doc = json.loads(path.read_text())
        read[version] = iiif.read_canvases(str(path), lambda ref, d=doc: d)
    for version, canvases in read.items():
        assert [c.id for c in canvases] == [f"http://127.0.0.1:9/canvas/{k}" for k in range(3)]
        assert [c.metadata["genre"] for c in canvases] == [["portrait"], ["landscape"], ["portrait"]]
        assert [c.width for c in canvases] == [40, 41, 42]
        assert canvases[0].service.id == "http://127.0.0.1:9/iiif/0"
        assert canvases[0].service.level == 0 and canvases[0].service.version == version
        assert canvases[0].attribution == "featbank test collection"
        assert "publicdomain" in canvases[0].rights


def test_the_3_0_manifests_the_tests_build_are_valid_for_iiif_prezi3(tmp_path):
    import iiif_prezi3 as prezi3  # the maintained 3.0 model library (a test dependency)

    path = write_layout([(make_image(tmp_path / "a.jpg", 0), {"genre": "x"})], tmp_path,
                        "http://127.0.0.1:9", version=3)
    manifest = prezi3.Manifest(**json.loads(path.read_text()))
    assert manifest.items[0].id == "http://127.0.0.1:9/canvas/0"


def test_nested_collections_are_followed_once_and_manifest_metadata_applies_to_canvases():
    m1 = _manifest3("http://h/m1", [_canvas3("http://h/c/1", [
        {"label": {"en": ["genre"]}, "value": {"en": ["portrait"]}}])])
    m2 = _manifest3("http://h/m2", [_canvas3("http://h/c/2", [
        {"label": {"fr": ["genre"]}, "value": {"fr": ["paysage"], "en": ["landscape"]}},
        {"label": {"en": ["collection"]}, "value": {"en": ["drawings"]}}])])
    inner = {"@context": iiif.PRESENTATION_3, "id": "http://h/inner", "type": "Collection",
             "items": [{"id": "http://h/m2", "type": "Manifest"},
                       {"id": "http://h/top", "type": "Collection"}]}  # a loop back up
    top = {"@context": iiif.PRESENTATION_3, "id": "http://h/top", "type": "Collection",
           "items": [{"id": "http://h/m1", "type": "Manifest"},
                     {"id": "http://h/inner", "type": "Collection"},
                     {"id": "http://h/m1", "type": "Manifest"}]}
    docs = {d["id"]: d for d in (m1, m2, inner, top)}
    asked = []
    canvases = iiif.read_canvases("http://h/top", lambda ref: asked.append(ref) or docs[ref])
    assert [c.id for c in canvases] == ["http://h/c/1", "http://h/c/2"]
    assert sorted(asked) == sorted(set(asked))  # each document read once
    assert canvases[0].metadata == {"collection": ["prints"], "genre": ["portrait"]}
    assert canvases[1].metadata == {"collection": ["drawings"], "genre": ["landscape"]}


def test_values_are_plain_text_never_markup():
    assert iiif.values('<a href="x" onclick="evil()">Rembrandt</a> <b>van Rijn</b>') == \
        ["Rembrandt van Rijn"]
    assert iiif.values("<script>alert(1)</script>oil &amp; canvas") == ["alert(1)oil & canvas"]
    assert iiif.values([{"@value": "Gemälde", "@language": "de"},
                        {"@value": "painting", "@language": "en"}]) == ["painting"]
    assert iiif.values({"nl": ["schilderij"]}) == ["schilderij"]
    assert iiif.values({"none": ["a", "b"]}) == ["a", "b"]


def test_image_ids_are_stable_safe_relative_paths_whatever_the_canvas_id():
    odd = ["http://h/../../etc/passwd", "http://h/c/1?x=<b>", "urn:uuid:1234",
           "http://h/" + "é" * 300, "http://h/c/1", "http://h/c/1/"]
    ids = [iiif.image_id(c) for c in odd]
    assert len(set(ids)) == len(ids)  # the digest keeps near-equal ids apart
    assert ids[4] == iiif.image_id("http://h/c/1")
    for image in ids:
        assert ".." not in image.split("/") and not image.startswith("/")
        assert len(image) < 120 and image.endswith(".jpg")


def test_level_0_takes_the_smallest_listed_size_that_is_large_enough():
    service = iiif.Service("http://h/iiif/a", level=0, version=3,
                           sizes=[(200, 150), (400, 300), (800, 600)])
    canvas = iiif.Canvas("http://h/c", "http://h/m", service=service, width=1600, height=1200,
                         image="http://h/iiif/a/full/max/0/default.jpg")
    urls = iiif.candidate_urls(canvas, 256)
    assert urls[0] == "http://h/iiif/a/full/400,300/0/default.jpg"
    assert urls[-1] == "http://h/iiif/a/full/max/0/default.jpg"
    assert iiif.candidate_urls(canvas, 2000)[0] == "http://h/iiif/a/full/800,600/0/default.jpg"


def test_a_dynamic_service_is_asked_for_the_size_the_run_needs_never_above_full():
    service = iiif.Service("http://h/iiif/a", level=2, version=2)
    canvas = iiif.Canvas("http://h/c", "http://h/m", service=service, width=1000, height=500)
    assert iiif.candidate_urls(canvas, 342)[0] == "http://h/iiif/a/full/684,342/0/default.jpg"
    small = iiif.Canvas("http://h/c", "http://h/m", service=service, width=300, height=200)
    assert iiif.candidate_urls(small, 342) == ["http://h/iiif/a/full/full/0/default.jpg"]


def test_what_is_not_iiif_is_one_clear_error():
    with pytest.raises(BadInput, match="not a IIIF manifest or collection"):
        iiif.read_canvases("x", lambda ref: {"type": "Painting"})
    with pytest.raises(BadInput, match="not a IIIF document"):
        iiif.read_canvases("x", lambda ref: ["a"])


def test_a_collection_name_comes_from_the_source():
    assert iiif.default_name("https://iiif.museum.org/objects/SK-C-5/manifest") == "SK-C-5"
    assert iiif.default_name("http://127.0.0.1:8000/manifest.json") == "127.0.0.1"
    assert iiif.default_name("downloads/paintings.json") == "paintings"
