"""Geometric verification on real photographs: a copy keeps many RANSAC inliers however
it was turned, mirrored, cropped or re-encoded; a distinct photograph keeps few."""
import io

import numpy as np
import pytest
from helpers import HERITAGE, needs_heritage
from PIL import Image, ImageOps

from featbank.analysis.geometry import MIN_INLIERS, Verifier, working_gray

COPIES = {
    "rotated90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rotated180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rotated270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "mirrored": ImageOps.mirror,
    "cropped10": lambda im: im.crop((round(im.width * 0.05), round(im.height * 0.05),
                                     round(im.width * 0.95), round(im.height * 0.95))),
    "jpeg30": lambda im: Image.open(_encoded(im, 30)),
}


def _encoded(im, quality):
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="module")
def photographs():
    return sorted((HERITAGE / "test").glob("*/*.jpg"))[::97][:12]


@needs_heritage
@pytest.mark.parametrize("kind", sorted(COPIES))
def test_a_copy_is_confirmed_and_a_distinct_photograph_is_not(kind, photographs, tmp_path):
    verifier = Verifier()
    for k, path in enumerate(photographs[:6]):
        with Image.open(path) as im:
            copy = COPIES[kind](im.convert("RGB"))
        target = tmp_path / f"{k}.png"
        copy.save(target)
        match = verifier.match(path, target)
        assert match.confirmed(), (kind, path.name, match)
        assert match.mirrored == (kind == "mirrored")
        if kind.startswith("rotated"):  # the turn is measured, counter-clockwise
            turn = int(kind.removeprefix("rotated"))
            assert min(abs(match.rotation - turn), 360 - abs(match.rotation - turn)) < 5
        other = photographs[6 + k]
        assert verifier.match(path, other).inliers < MIN_INLIERS, (path.name, other.name)


def test_small_images_are_scaled_up_and_unreadable_ones_are_none(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), np.uint8)).save(
        tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert min(working_gray(tmp_path / "small.png").shape) == 256
    assert working_gray(tmp_path / "broken.jpg") is None
    assert Verifier().match(tmp_path / "small.png", tmp_path / "broken.jpg").inliers == 0
