"""The built-in demo collection: small synthetic "artworks", generated on first use.

320 images of 96x96 pixels, deterministic (seeded), with two label columns:
``material`` (oil, watercolour, ink: palette and texture) and ``type``
(portrait, landscape, still_life, abstract: composition). Written under
``<cache>/demo/images`` as PNG and JPEG with a ``manifest.csv``, so the demo
exercises the same manifest path as a real museum table.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from featbank.data.collection import Collection, from_manifest

MATERIALS = ("oil", "watercolour", "ink")
TYPES = ("portrait", "landscape", "still_life", "abstract")
N_IMAGES = 320
SIZE = 96
SEED = 2018


def _palette(material: str, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    if material == "ink":
        shade = int(rng.integers(0, 60))
        return [(shade, shade, shade + 10), (235, 230, 215)]
    base = rng.integers(40, 200, size=(4, 3))
    if material == "watercolour":
        base = 255 - (255 - base) // 3  # pale washes
    return [tuple(int(v) for v in c) for c in base]


def _compose(draw: ImageDraw.ImageDraw, kind: str, colors, rng) -> None:
    s = SIZE
    j = lambda: int(rng.integers(-8, 9))  # noqa: E731 - jitter
    if kind == "portrait":
        draw.ellipse((30 + j(), 14 + j(), 66 + j(), 56 + j()), fill=colors[0])
        draw.rectangle((22 + j(), 58 + j(), 74 + j(), s), fill=colors[-1])
    elif kind == "landscape":
        horizon = 50 + j()
        draw.rectangle((0, horizon, s, s), fill=colors[0])
        draw.polygon([(0, horizon), (30 + j(), 25 + j()), (60 + j(), horizon)], fill=colors[-1])
    elif kind == "still_life":
        draw.rectangle((0, 64 + j(), s, s), fill=colors[-1])
        for x in (18, 42, 66):
            draw.ellipse((x + j(), 44 + j(), x + 18 + j(), 66 + j()), fill=colors[0])
    else:
        for _ in range(7):
            x, y = rng.integers(0, s, size=2)
            draw.line((int(x), int(y), int(rng.integers(0, s)), int(rng.integers(0, s))),
                      fill=colors[int(rng.integers(0, len(colors)))], width=int(rng.integers(2, 8)))


def _artwork(material: str, kind: str, rng: np.random.Generator) -> Image.Image:
    colors = _palette(material, rng)
    background = (235, 230, 215) if material == "ink" else colors[1]
    im = Image.new("RGB", (SIZE, SIZE), background)
    _compose(ImageDraw.Draw(im), kind, colors if material != "ink" else [colors[0]], rng)
    array = np.asarray(im, dtype=np.float32)
    if material == "oil":  # impasto: coarse, strong brush noise
        array += rng.normal(0, 18, size=(SIZE // 4, SIZE // 4, 3)).repeat(4, 0).repeat(4, 1)
    elif material == "watercolour":  # soft edges, paper grain
        im = Image.fromarray(array.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5))
        array = np.asarray(im, dtype=np.float32) + rng.normal(0, 4, size=array.shape)
    else:  # ink: hatching
        array[::3, :, :] *= 0.85
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def generate(folder: Path) -> None:
    """Write the images and ``manifest.csv`` into ``folder`` (deterministic)."""
    rng = np.random.default_rng(SEED)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(N_IMAGES):
        material = MATERIALS[k % len(MATERIALS)]
        kind = TYPES[(k // len(MATERIALS)) % len(TYPES)]
        # Manifest ids come without extension, like the Rijksmuseum table.
        stem = f"DEMO-{k:04d}"
        suffix = ".jpg" if k % 2 else ".png"
        image = _artwork(material, kind, rng)
        image.save(folder / "images" / (stem + suffix), **({"quality": 90} if k % 2 else {}))
        rows.append({"ImageId": stem, "material": material, "type": kind})
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["ImageId", "material", "type"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / ".complete").write_text("ok\n")


def demo_collection(cache_root: str | Path = "cache") -> Collection:
    """The demo collection, generated into ``<cache_root>/demo`` on first use."""
    folder = Path(cache_root) / "demo"
    if not (folder / ".complete").is_file():
        generate(folder)
    return from_manifest(folder / "manifest.csv", root=folder / "images", name="demo")
