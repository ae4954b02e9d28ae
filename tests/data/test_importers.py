"""Dublin Core XML and iMet importers on small generated files."""
import pytest
from helpers import make_image

from featbank.data.sources import open_collection

DC_RECORD = """<?xml version="1.0" encoding="UTF-8"?>
<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/"
           xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:identifier>{identifier}</dc:identifier>
  <dc:type>{type}</dc:type>
  {subjects}
</oai_dc:dc>
"""


def _record(identifier, type_, subjects):
    return DC_RECORD.format(identifier=identifier, type=type_,
                            subjects="".join(f"<dc:subject>{s}</dc:subject>" for s in subjects))


def test_folder_of_dublin_core_records(tmp_path):
    images = tmp_path / "images"
    for k in range(4):
        make_image(images / "prints" / f"p{k}.jpg", seed=k)
    records = tmp_path / "records"
    records.mkdir()
    (records / "r0.xml").write_text(_record("prints/p0.jpg", "print", ["ship", "sea"]))
    (records / "r1.xml").write_text(_record("https://museum.org/img/p1.jpg", "drawing", ["sea"]))
    (records / "r2.xml").write_text(_record("prints/nothere.jpg", "print", []))
    (images / "prints" / "p3.xml").write_text(_record("", "print", ["ship"]))  # its own path
    c = open_collection(cache=str(tmp_path / "cache"), collection="dc",
                                  images=None, manifest=str(records), root=str(images))
    assert c.ids == ["prints/p0.jpg", "prints/p1.jpg"]
    assert c.labels["type"] == ["print", "drawing"]
    assert c.labels["subject"] == ["sea;ship", "sea"] and c.multi_label == {"subject": ";"}
    assert c.missing == ["prints/nothere.jpg"]
    own = open_collection(cache=str(tmp_path / "cache"), collection="own", images=None,
                                    manifest=str(images / "prints" / "p3.xml"), root=str(images))
    assert own.ids == ["prints/p3.jpg"] and own.labels["type"] == ["print"]


def test_one_file_of_many_records_and_bad_xml(tmp_path):
    images = tmp_path / "images"
    for k in range(3):
        make_image(images / f"{k}.png", seed=k)
    body = "".join(f"<record><metadata>{_record(f'{k}.png', 'vase', ['a', 'b'][:k + 1])}"
                   "</metadata></record>" for k in range(3))
    dump = tmp_path / "ListRecords.xml"
    dump.write_text('<?xml version="1.0"?><OAI-PMH><ListRecords>'
                    + body.replace('<?xml version="1.0" encoding="UTF-8"?>', "")
                    + "</ListRecords></OAI-PMH>")
    c = open_collection(cache=str(tmp_path / "cache"), collection="dump", images=None,
                                  manifest=str(dump), root=str(images), label_columns="subject")
    assert c.ids == ["0.png", "1.png", "2.png"] and c.tasks == ["subject"]
    assert c.labels["subject"] == ["a", "a;b", "a;b"]
    bad = tmp_path / "bad.xml"
    bad.write_text("<dc><unclosed>")
    with pytest.raises(ValueError, match="bad.xml: malformed XML"):
        open_collection(cache=str(tmp_path / "cache"), collection="bad", images=None,
                                  manifest=str(bad), root=str(images))
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    with pytest.raises(ValueError, match="bomb.xml: refused unsafe XML"):
        open_collection(cache=str(tmp_path / "cache"), collection="bomb", images=None,
                                  manifest=str(bomb), root=str(images))


def test_imet_attributes_become_multi_label_tasks(tmp_path):
    for name in ("a1", "b2"):
        make_image(tmp_path / "train" / f"{name}.png", seed=len(name))
    (tmp_path / "labels.csv").write_text("attribute_id,attribute_name\n0,culture::italian\n"
                                         "1,medium::paper\n2,medium::ink\n3,tags::ships\n")
    (tmp_path / "train.csv").write_text("id,attribute_ids\na1,0 1 2\nb2,1 3\nc3,0\n")
    c = open_collection(cache=str(tmp_path / "cache"), collection="imet", images=None,
                                  manifest=str(tmp_path / "train.csv"),
                                  attributes=str(tmp_path / "labels.csv"),
                                  root=str(tmp_path / "train"))
    assert c.ids == ["a1.png", "b2.png"] and c.missing == ["c3"]
    assert c.tasks == ["culture", "medium", "tags"]
    assert c.labels["medium"] == ["ink;paper", "paper"] and c.labels["culture"] == ["italian", None]
    assert set(c.multi_label) == {"culture", "medium", "tags"}
    (tmp_path / "train.csv").write_text("id,attribute_ids\na1,0 9\n")
    with pytest.raises(ValueError, match=r"train.csv:2: unknown attribute id '9'"):
        open_collection(cache=str(tmp_path / "cache"), collection="imet", images=None,
                                  manifest=str(tmp_path / "train.csv"),
                                  attributes=str(tmp_path / "labels.csv"),
                                  root=str(tmp_path / "train"))


def test_multi_label_manifest_columns(tmp_path):
    for k in range(2):
        make_image(tmp_path / f"{k}.jpg", seed=k)
    (tmp_path / "m.csv").write_text("image,tags,kind\n0.jpg,b; a,x\n1.jpg,a,y\n")
    c = open_collection(cache=str(tmp_path / "cache"), collection="m", images=None,
                                  manifest=str(tmp_path / "m.csv"), multi_label="tags")
    assert c.labels["tags"] == ["a;b", "a"] and c.multi_label == {"tags": ";"}
    with pytest.raises(ValueError, match="--multi-label column 'nope'"):
        open_collection(cache=str(tmp_path / "cache"), collection="m", images=None,
                                  manifest=str(tmp_path / "m.csv"), multi_label="nope")
