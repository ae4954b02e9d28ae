"""--group-by duplicates: near-duplicates, rotated copies included, never straddle the split."""
import csv
import shutil

import pytest
from helpers import HERITAGE, SQUEEZENET, needs_heritage, needs_squeezenet
from PIL import Image

import featbank as fb
from featbank.core.errors import BadInput


@pytest.mark.slow
@needs_heritage
@needs_squeezenet
def test_a_split_grouped_by_duplicates_keeps_every_copy_with_its_original(tmp_path):
    copies = {}
    for label in ("altar", "vault"):
        folder = tmp_path / "images" / label
        folder.mkdir(parents=True)
        for k, path in enumerate(sorted((HERITAGE / "test" / label).glob("*.jpg"))[:40]):
            shutil.copy(path, folder / f"{k:03d}.jpg")
        for k in range(8):
            with Image.open(folder / f"{k * 5:03d}.jpg") as im:
                (im.transpose(Image.Transpose.ROTATE_180) if k % 2 else im).save(
                    folder / f"copy{k}.jpg", quality=60)
            copies[f"{label}/copy{k}.jpg"] = f"{label}/{k * 5:03d}.jpg"
    cache = tmp_path / "cache"
    fb.extract(tmp_path / "images", backbone="squeezenet1_1", weights=str(SQUEEZENET),
               collection="c", cache=cache, progress=False)
    split = (0.5, 0.25, 0.25)
    plain = fb.leaks("squeezenet1_1", "label", collection="c", cache=cache, split=split,
                     progress=False)
    assert len(plain) > 0  # a random split puts copies on both sides
    notes = []
    rows = fb.classify(collection="c", cache=cache, head="logreg", split=split,
                       group_by="duplicates", warn=notes.append)
    assert rows and any("groups of near-duplicates" in n for n in notes)
    [saved] = (cache / "c" / "splits").glob("label__*_by-duplicates.csv")
    with open(saved, newline="") as fh:
        part = {r["id"]: r["split"] for r in csv.DictReader(fh)}
    assert all(part[copy] == part[original] for copy, original in copies.items())
    grouped = fb.leaks("squeezenet1_1", "label", collection="c", cache=cache, split=split,
                       group_by="duplicates", progress=False)
    assert len(grouped) == 0


def test_several_backbones_must_be_named(tmp_path):
    from helpers import write_toy_cache

    write_toy_cache(tmp_path, "toy")
    with pytest.raises(BadInput, match="duplicates:"):
        fb.classify(collection="toy", cache=tmp_path, head="logreg", group_by="duplicates")
