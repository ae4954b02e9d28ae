"""Near-duplicate finding with known answers, made from real heritage photographs.

    .venv/bin/python bench/bench_duplicates.py [--images DIR] [--copies 30] [--repeats 3]

From a folder of real images (default ../shared/data/heritage/test), COPIES
originals get a copy of each kind, and the rest stay distinct:

- ``identical``: the same bytes under another name;
- ``jpeg``: re-encoded at quality 30;
- ``resized``: scaled to 60 % and re-encoded;
- ``cropped``: 5 to 20 % cut from the borders;
- ``cropped10``: 10 % cut from the borders;
- ``colour``: brightness x1.15, saturation x0.8, a warmer white balance;
- ``mirrored``: flipped left to right;
- ``rotated90``, ``rotated180``, ``rotated270``: turned counter-clockwise.

Features come from the default backbone (SqueezeNet 1.1, the ImageNet weights
of ../shared/weights when there, else random); ``analyze.py duplicates``
groups them at each threshold of ``--thresholds``, with its defaults: every
image also queried turned by 90, 180 and 270 degrees, and each candidate
pair confirmed by local features (ORB, RANSAC) with ``MIN_INLIERS``. For each kind: recall, the
share of its copies grouped with their original; and precision of the groups,
the share of linked pairs that are a true original-copy pair (copies of the same
original count too). Distinct photographs of one object in the collection
count as false positives, as a user would see them.

The originals are split in two halves (by a hash of their name, with their
copies): the threshold of best F1 is chosen on one half, and precision and
recall at it are reported on the other, which the choice never saw. The
default of ``featbank.analysis.config.DUPLICATE_THRESHOLD`` is the chosen one.
The same choice without the local check (``verify="off"``) is reported beside it,
to show what the check removes. Median and min-max of ``--repeats`` timed runs; written to
bench/results/bench_duplicates.json.
"""
import argparse
import csv
import hashlib
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Bench  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
KINDS = ("identical", "jpeg", "resized", "cropped", "cropped10", "colour", "mirrored",
         "rotated90", "rotated180", "rotated270")
TURNS = {"rotated90": Image.Transpose.ROTATE_90, "rotated180": Image.Transpose.ROTATE_180,
         "rotated270": Image.Transpose.ROTATE_270}


def make_copy(kind: str, source: Path, target: Path, k: int) -> None:
    if kind == "identical":
        shutil.copyfile(source, target)
        return
    with Image.open(source) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        if kind == "resized":
            im = im.resize((max(8, round(im.width * 0.6)), max(8, round(im.height * 0.6))))
        elif kind in ("cropped", "cropped10"):
            cut = 0.05 + 0.15 * (k % 4) / 3 if kind == "cropped" else 0.10  # 5 to 20 %, 10 %
            dx, dy = round(im.width * cut / 2), round(im.height * cut / 2)
            im = im.crop((dx, dy, im.width - dx, im.height - dy))
        elif kind == "colour":
            im = ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(0.8)
            r, g, b = im.split()
            im = Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.08))), g,
                                     b.point(lambda v: int(v * 0.92))))
        elif kind == "mirrored":
            im = ImageOps.mirror(im)
        elif kind in TURNS:
            im = im.transpose(TURNS[kind])
        im.save(target, format="JPEG", quality=30 if kind == "jpeg" else 90)


def planted_collection(images: Path, folder: Path, copies: int) -> dict[str, tuple[str, str]]:
    """A flat folder of every image plus the planted copies; copy id -> (kind, original id)."""
    originals = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    chosen = originals[::max(1, len(originals) // (copies * len(KINDS)))][:copies * len(KINDS)]
    truth = {}
    for k, path in enumerate(originals):
        shutil.copyfile(path, folder / "all" / f"{k:05d}.jpg")
    index = {p: k for k, p in enumerate(originals)}
    for n, (kind, path) in enumerate(zip(itertools.cycle(KINDS), chosen)):
        name = f"all/copy_{n:04d}_{kind}.jpg"
        make_copy(kind, path, folder / name, n)
        truth[name] = (kind, f"all/{index[path]:05d}.jpg")
    return truth


def half_of(original: str) -> int:
    """0 or 1: which half an original (and its copies) belongs to, by a hash of its name."""
    return hashlib.sha256(original.encode()).digest()[0] % 2


def score(rows: list[dict], truth: dict[str, tuple[str, str]], half: int | None = None
          ) -> dict[str, tuple[float, float]]:
    """Per kind (and ``all``): (precision of the linked pairs it is part of, recall), over
    the originals of ``half`` (a pair counts for the half of its first image's original)."""
    groups: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["id"])
    group_of = {i: g for g, members in groups.items() for i in members}
    origin = {i: truth[i][1] if i in truth else i for members in groups.values() for i in members}
    mine = (lambda i: True) if half is None else (lambda i: half_of(origin[i]) == half)
    out = {}
    for kind in (*KINDS, "all"):
        copies = [c for c, (k, o) in truth.items() if kind in (k, "all")
                  and (half is None or half_of(o) == half)]
        found = [c for c in copies if c in group_of and group_of[c] == group_of.get(truth[c][1])]
        pairs = [(a, b) for members in groups.values()
                 for a, b in itertools.combinations(sorted(members), 2)
                 if mine(a) and (kind == "all" or a in copies or b in copies)]
        right = [(a, b) for a, b in pairs if origin[a] == origin[b]]
        out[kind] = (len(right) / len(pairs) if pairs else 1.0, len(found) / len(copies))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data/heritage/test"))
    parser.add_argument("--copies", type=int, default=30, help="originals copied, per kind")
    parser.add_argument("--thresholds", default="0.88,0.9,0.92,0.94,0.96,0.98")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import featbank as fb

    weights = SHARED / "weights/squeezenet1_1-imagenet.pth"
    weights = str(weights) if weights.is_file() else "random"
    bench = Bench("bench_duplicates", repeats=args.repeats, settings={
        "images": args.images, "copies_per_kind": args.copies, "backbone": "squeezenet1_1",
        "weights": Path(weights).name})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "planted"
        (folder / "all").mkdir(parents=True)
        truth = planted_collection(Path(args.images), folder, args.copies)
        cache = Path(tmp) / "cache"
        fb.extract(folder, backbone="squeezenet1_1", weights=weights, cache=cache,
                   collection="planted", progress=False)
        best, held_out = sweep(fb, cache, truth, args.thresholds, bench)
        bench.record("threshold of best F1 (all kinds) on the choice half", [best], unit="")
        for kind, (precision, recall) in held_out.items():  # what the choice never saw
            bench.record(f"held-out half, cosine >= {best:g}, {kind}: precision", [precision],
                         unit="")
            bench.record(f"held-out half, cosine >= {best:g}, {kind}: recall", [recall], unit="")
        plain, plain_held_out = sweep(fb, cache, truth, args.thresholds, None,
                                      verify="off")
        for measure, value in zip(("precision", "recall"), plain_held_out["all"]):
            bench.record(f"no local check: held-out half, cosine >= {plain:g} (its best F1), "
                         f"all: {measure}", [value], unit="")
        bench.measure(f"duplicates over {len(truth) + len(list(Path(args.images).rglob('*.jpg'))):,}"
                      " images, turned images kept", lambda: _timed(lambda: fb.duplicates(
                          "squeezenet1_1", collection="planted", cache=cache, threshold=best,
                          progress=False)),
                      unit="s")
    bench.write()


def sweep(fb, cache, truth, thresholds: str, bench, **keywords):
    """The threshold of best F1 on the choice half (figures of each threshold recorded in
    ``bench`` when given) and each kind's (precision, recall) at it on the held-out half."""
    chosen, held_out = {}, {}
    for threshold in (float(t) for t in thresholds.split(",")):
        report = fb.duplicates("squeezenet1_1", collection="planted", cache=cache,
                               threshold=threshold, progress=False, **keywords)
        with open(report["csv"], newline="") as fh:
            rows = list(csv.DictReader(fh))
        chosen[threshold], held_out[threshold] = score(rows, truth, 0), score(rows, truth, 1)
        if bench is not None:
            for measure, value in zip(("precision", "recall"), chosen[threshold]["all"]):
                bench.record(f"choice half, cosine >= {threshold:g}, all: {measure}", [value],
                             unit="")

    def f1(t):
        p, r = chosen[t]["all"]
        return 2 * p * r / (p + r) if p + r else 0.0
    best = max(chosen, key=f1)
    return best, held_out[best]


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
