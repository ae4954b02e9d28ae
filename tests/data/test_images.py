import numpy as np
import pytest
import torch
from helpers import make_image
from PIL import Image

from featbank.data.images import DecodeError, load_rgb, min_decode_size, normalize, to_view
from featbank.data.preprocess import Preprocess

FORMATS = {".jpg": ("JPEG", "RGB L"), ".png": ("PNG", "RGB L P RGBA"),
           ".tif": ("TIFF", "RGB L P RGBA"), ".webp": ("WEBP", "RGB L P RGBA"),
           ".bmp": ("BMP", "RGB L P")}


@pytest.mark.parametrize("suffix,fmt,mode", [(s, f, m) for s, (f, modes) in FORMATS.items()
                                             for m in modes.split()])
def test_formats_and_modes_decode_to_rgb(tmp_path, suffix, fmt, mode):
    path = make_image(tmp_path / f"x{suffix}", seed=1, mode=mode, fmt=fmt)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (40, 32)


def test_cmyk_jpeg(tmp_path):
    path = make_image(tmp_path / "cmyk.jpg", seed=2, mode="CMYK")
    assert load_rgb(path).mode == "RGB"


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    array = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    Image.fromarray(array).save(tmp_path / "g16.png")
    pixels = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert pixels.shape == (8, 8, 3) and abs(int(pixels[0, 0, 0]) - 128) <= 1


def test_transparent_background_becomes_white(tmp_path):
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)


def test_large_jpeg_is_drafted_but_never_below_the_asked_size(tmp_path):
    path = make_image(tmp_path / "big.jpg", seed=3, size=(2000, 1200))
    drafted = load_rgb(path, min_size=224)
    assert min(drafted.size) >= 224 and drafted.size[0] <= 1000
    assert load_rgb(path).size == (2000, 1200)


@pytest.mark.parametrize("content,match", [(b"", "empty file"), (b"not an image", "cannot identify")])
def test_undecodable_files_raise_decode_error(tmp_path, content, match):
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(DecodeError, match=match):
        load_rgb(tmp_path / "bad.jpg")


def test_truncated_jpeg_raises_decode_error(tmp_path):
    path = make_image(tmp_path / "t.jpg", seed=4, size=(200, 200))
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(DecodeError):
        load_rgb(path)


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(DecodeError, match="not found"):
        load_rgb(tmp_path / "none.jpg")


def test_views_follow_the_spec():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    squash = to_view(image, Preprocess(input_size=64))
    crop = to_view(image, Preprocess(input_size=64, resize="center_crop", crop_pct=0.875))
    assert squash.shape == crop.shape == (3, 64, 64) and squash.dtype == torch.uint8
    assert min_decode_size([Preprocess(input_size=224),
                            Preprocess(input_size=64, resize="center_crop", crop_pct=0.5)]) == 224
    with pytest.raises(ValueError, match="unknown resize"):
        to_view(image, Preprocess(input_size=64, resize="stretch"))


def test_normalize_matches_torchvision_convention():
    pre = Preprocess(input_size=2)
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1.0 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    assert torch.allclose(normalize(pixels, pre)[0, :, 0, 0], expected)
