"""Every HTML page featbank writes shows a collection's ids and labels as text: a hostile
label from a manifest or a hostile file name never runs as markup or code, seen in a
real browser (no dialog, no page error, no injected element)."""
import csv
import shutil

import pytest
from helpers import SQUEEZENET, browser_page, make_image, needs_browser, needs_squeezenet

import featbank as fb

HOSTILE = "<img src=x onerror=alert(1)>"
NAME = "a\"'><svg onload=alert(2)>.png"  # a file name is an id, and ids reach pages too


@pytest.fixture
def hostile(tmp_path):
    """A manifest whose labels are markup, images with markup in their names, and copies
    (so that the near-duplicates page has groups)."""
    root = tmp_path / "images"
    rows = []
    for k in range(24):
        name = NAME.replace(".png", f"{k}.png") if k < 3 else f"{k}.png"
        make_image(root / name, seed=k, size=(48, 48))
        rows.append({"image": name, "label": HOSTILE if k % 2 else "plain",
                     "note": f"{HOSTILE}<script>alert(3)</script>"})
    for k in range(3):  # copies of the first three
        shutil.copy(root / rows[k]["image"], root / f"copy{k}.png")
        rows.append({**rows[k], "image": f"copy{k}.png"})
    with open(root / "m.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "note"])
        writer.writeheader()
        writer.writerows(rows)
    cache = tmp_path / "cache"
    fb.extract(backbone="squeezenet1_1", weights=str(SQUEEZENET), manifest=root / "m.csv",
               collection="hostile", cache=cache, progress=False, workers=0)
    return cache


def _pages(cache):
    retrieved = fb.retrieve("squeezenet1_1", "label", collection="hostile", cache=cache,
                            progress=False, min_per_class=3)
    copies = fb.duplicates("squeezenet1_1", collection="hostile", cache=cache, threshold=0.99)
    mapped = fb.map2d("squeezenet1_1", "label", collection="hostile", cache=cache,
                      method="tsne", progress=False)
    issues = fb.label_issues("squeezenet1_1", "label", collection="hostile", cache=cache,
                             min_per_class=3, sheet=0)
    assert copies["n_groups"] >= 3
    return {"retrieve": retrieved["html"], "duplicates": copies["html"], "map": mapped["html"],
            "label-issues": issues.attrs["report"]["html"]}


@needs_browser
@needs_squeezenet  # real features: copies group, other images do not
def test_no_page_runs_a_label_or_an_id_as_markup(hostile):
    for name, path in _pages(hostile).items():
        with browser_page() as page:
            dialogs, errors = [], []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"file://{path}")
            for circle in page.query_selector_all("circle")[:30]:  # the map's tooltips
                circle.hover()
                if HOSTILE in (page.text_content("#tip") or ""):
                    break
            if name == "map":
                assert HOSTILE in page.text_content("#tip"), "the label shows as text"
            text = page.text_content("body")
            assert (HOSTILE in text or NAME.replace(".png", "0.png") in text
                    or name == "map"), name
            assert dialogs == [] and errors == [], (name, dialogs, errors)
            assert page.query_selector("img[src='x']") is None, name
            assert page.query_selector("svg[onload], [onerror], script:not([id]):not([src])"
                                       ":has-text('alert')") is None, name
