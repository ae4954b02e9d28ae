import pytest
from helpers import make_image

from featbank.data.collection import (
    clean_label,
    from_folder,
    from_manifest,
    load_metadata,
    save_metadata,
)
from featbank.data.demo import demo_collection


def test_folder_ids_are_relative_paths(image_folder):
    c = from_folder(image_folder)
    assert len(c) == 12 and c.tasks == ["label"]
    assert "cats/img0.jpg" in c.ids and "dogs/img0.jpg" in c.ids  # same file name twice
    assert c.labels["label"][c.ids.index("dogs/img3.jpg")] == "dogs"
    assert c.ids == sorted(c.ids)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        from_folder(tmp_path / "empty")
    (tmp_path / "m.csv").write_text("image,label\n")
    with pytest.raises(ValueError, match="m.csv is a file, not a folder.*--manifest"):
        from_folder(tmp_path / "m.csv")


def test_a_failed_run_leaves_no_collection_folder(tmp_path, image_folder):
    from featbank.data.collection import new_collection_folder

    folder = tmp_path / "cache" / "art"
    with pytest.raises(RuntimeError), new_collection_folder(folder):
        (folder / "splits").mkdir(parents=True)
        (folder / "collection.json").write_text("{}")
        raise RuntimeError("the weights would not load")
    assert not folder.exists()
    with pytest.raises(RuntimeError), new_collection_folder(folder):  # rows were written
        (folder / "features").mkdir(parents=True)
        (folder / "features" / "x.h5").write_bytes(b"rows")
        raise RuntimeError("killed")
    assert (folder / "features" / "x.h5").exists()


def test_clean_label_undoes_escaped_utf8_and_spaces():
    assert clean_label(" Everdingen, Caesar Bo\\xc3\\xabtius van") == "Everdingen, Caesar Boëtius van"
    assert clean_label("  ") is None


def _manifest(tmp_path, text):
    for k, name in enumerate(["0001_SK-A-1", "0002_SK-A-2", "0003_RP-P-3"]):
        make_image(tmp_path / "img" / f"{name}.jpg", seed=k)
    path = tmp_path / "meta.csv"
    path.write_text(text, encoding="utf-8")
    return path


RIJKS = (',ImageId,dc_creator,dc_materiaal,dc_type\n'
         '0,0001_SK-A-1," Maris, Matthijs",olieverf,schilderij\n'
         '1,0002_SK-A-2," Bo\\xc3\\xabtius",papier,prent\n'
         '2,0003_RP-P-3, anoniem,,prent\n'
         '3,0004_MISSING, anoniem,papier,prent\n')


def test_rijksmuseum_style_manifest(tmp_path):
    c = from_manifest(_manifest(tmp_path, RIJKS), root=tmp_path / "img")
    assert c.ids == ["0001_SK-A-1.jpg", "0002_SK-A-2.jpg", "0003_RP-P-3.jpg"]
    assert c.tasks == ["dc_creator", "dc_materiaal", "dc_type"]  # unnamed index column ignored
    assert c.labels["dc_creator"][1] == "Boëtius"
    assert c.labels["dc_materiaal"][2] is None
    assert c.missing == ["0004_MISSING"]
    assert c.name == "meta"


def test_manifest_column_errors(tmp_path):
    path = _manifest(tmp_path, RIJKS)
    with pytest.raises(ValueError, match="no column 'artist'.*ImageId"):
        from_manifest(path, root=tmp_path / "img", image_column="artist")
    with pytest.raises(ValueError, match="no column 'genre'"):
        from_manifest(path, root=tmp_path / "img", label_columns=["genre"])
    weird = tmp_path / "weird.csv"
    weird.write_text("a,b\nx,y\n")
    with pytest.raises(ValueError, match="--image-column"):
        from_manifest(weird, root=tmp_path / "img")
    with pytest.raises(ValueError, match="none of the"):
        from_manifest(weird, root=tmp_path / "img", image_column="a")


def test_metadata_round_trip(tmp_path, image_folder):
    c = from_folder(image_folder)
    save_metadata(c, tmp_path / "cache" / c.name)
    back = load_metadata(tmp_path / "cache" / c.name)
    assert back.ids == c.ids and back.labels == c.labels and back.root == c.root.resolve()


def test_demo_is_deterministic_and_has_two_tasks(tmp_path):
    a = demo_collection(tmp_path / "a")
    b = demo_collection(tmp_path / "b")
    assert len(a) == 320 and {"material", "type"} <= set(a.tasks)
    assert a.ids == b.ids
    for image_id in a.ids[:8]:
        assert a.path(image_id).read_bytes() == b.path(image_id).read_bytes()
