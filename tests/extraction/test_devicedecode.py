"""The device decoding path: which files it takes, its resize, and its features.

Everything here runs on the CPU (TorchCodec and torchvision decode with libjpeg
there, and ``decode="device"`` forces the bytes-in path); the CUDA test runs
where a GPU is.
"""
import io
import json

import numpy as np
import pytest
import torch
from helpers import make_image
from PIL import Image

from featbank.data.collection import from_folder
from featbank.data.images import load_rgb, to_view
from featbank.data.preprocess import Preprocess
from featbank.extraction.devicedecode import (
    JPEG_DECODERS,
    MAX_PILLOW_SHARE,
    DecoderBalance,
    balanced_share,
    decode_jpegs,
    device_decodable,
    jpeg_decoder,
    resize_views,
)
from featbank.extraction.engine import ExtractConfig, extract
from featbank.models.registry import get_spec
from featbank.store.features import read_features


def _smooth(path, seed, size=(120, 90), mode="RGB", **save):
    """A photograph-like image (smooth fields), where resize kernels barely differ."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return path


def _jpeg_bytes(**save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 10)).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def test_device_takes_plain_jpegs_only(tmp_path):
    assert device_decodable(_jpeg_bytes(quality=90))
    gray = io.BytesIO()
    Image.new("L", (16, 16), 90).save(gray, format="JPEG")
    assert device_decodable(gray.getvalue())
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16)).save(cmyk, format="JPEG")
    assert not device_decodable(cmyk.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: nvJPEG would not turn it
    assert not device_decodable(_jpeg_bytes(exif=exif.tobytes()))
    assert not device_decodable(_jpeg_bytes()[:-200])  # truncated: no end marker
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert not device_decodable(png.getvalue())
    assert not device_decodable(b"") and not device_decodable(b"catalogue note\n")


@pytest.mark.parametrize("pre", [Preprocess(input_size=64),
                                 Preprocess(input_size=48, interpolation="bicubic"),
                                 Preprocess(input_size=40, resize="center_crop", crop_pct=0.875)],
                         ids=["squash-bilinear", "squash-bicubic", "center-crop"])
def test_resize_matches_pillow_within_a_level(tmp_path, pre):
    paths = [_smooth(tmp_path / f"{k}.png", seed=k, size=size)
             for k, size in enumerate([(120, 90), (90, 120), (120, 90), (30, 20)])]
    images = [torch.from_numpy(np.asarray(load_rgb(p)).transpose(2, 0, 1).copy()) for p in paths]
    ours = resize_views(images, pre)
    pillow = torch.stack([to_view(load_rgb(p), pre) for p in paths])
    assert ours.shape == pillow.shape == (4, 3, pre.input_size, pre.input_size)
    difference = (ours.int() - pillow.int()).abs()
    # docs/gpu.md: at most one grey level (measured: max 1, mean 0.17-0.20 here)
    assert difference.max() <= 1 and difference.float().mean() < 0.25


@pytest.mark.parametrize("decoder", list(JPEG_DECODERS))
def test_batch_decode_returns_none_for_what_the_decoder_refuses(decoder):
    good = torch.frombuffer(bytearray(_jpeg_bytes(quality=95)), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff" + b"\x00" * 64), dtype=torch.uint8)
    decoded = decode_jpegs([good, bad, good], torch.device("cpu"), decoder)
    assert decoded[1] is None
    assert decoded[0].shape == (3, 24, 32) and torch.equal(decoded[0], decoded[2])


@pytest.mark.parametrize("decoder", list(JPEG_DECODERS))
def test_both_decoders_give_pillows_pixels_on_the_cpu(tmp_path, decoder):
    """On the CPU both libraries decode with libjpeg, as Pillow does: the same pixels,
    grey JPEGs and every chroma subsampling included."""
    paths = [_smooth(tmp_path / f"{k}.jpg", seed=k, size=(121, 91), mode=mode, quality=90,
                     subsampling=sub) for k, (mode, sub) in enumerate(
                         [("RGB", 0), ("RGB", 1), ("RGB", 2), ("L", 0)])]
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decoded = decode_jpegs(encoded, torch.device("cpu"), decoder)
    for path, image in zip(paths, decoded):
        pillow = np.asarray(load_rgb(path)).transpose(2, 0, 1)
        assert image.shape == pillow.shape and np.array_equal(image.numpy(), pillow), path.name


@pytest.fixture
def decoders_reloaded():
    """``jpeg_decoder`` caches what it found; start and end with an empty cache."""
    jpeg_decoder.cache_clear()
    yield
    jpeg_decoder.cache_clear()


def test_auto_takes_torchcodec_and_falls_back_to_torchvision(monkeypatch, decoders_reloaded):
    assert jpeg_decoder("auto")[0] == "torchcodec"  # installed with featbank[test]

    def absent():
        raise ImportError("No module named 'torchcodec'")
    monkeypatch.setitem(JPEG_DECODERS, "torchcodec", absent)
    jpeg_decoder.cache_clear()
    assert jpeg_decoder("auto")[0] == "torchvision"
    # and what it falls back to decodes: libjpeg's pixels, as Pillow's
    data = _jpeg_bytes(quality=90)
    [image] = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)],
                           torch.device("cpu"), "auto")
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(image, torch.from_numpy(pillow.copy()))
    with pytest.raises(ValueError, match=r"torchcodec JPEG decoder does not import: No module "
                                         r"named 'torchcodec' \(pip install 'featbank\[gpu\]'\)"):
        jpeg_decoder("torchcodec")
    with pytest.raises(ValueError, match="unknown JPEG decoder 'nvimgcodec'"):
        jpeg_decoder("nvimgcodec")


def test_balanced_share_lets_both_decoders_keep_the_same_pace():
    # An H100-like machine: 15 workers reading bytes at 3,300 img/s or decoding
    # photographs at 350 img/s each, nvJPEG at 10,000 img/s.
    costs = dict(read=1 / 3300, pillow=1 / 350)
    share = balanced_share(15, **costs, device_rate=10_000)
    workers_pace = 15 / (share * costs["pillow"] + (1 - share) * costs["read"])
    assert 0.25 < share < 0.35 and workers_pace == pytest.approx(10_000 / (1 - share))
    # A faster device takes more of the JPEGs, more workers take more of them.
    assert balanced_share(15, **costs, device_rate=20_000) < share
    assert share < balanced_share(15, **costs, device_rate=5_000)
    assert share < balanced_share(30, **costs, device_rate=10_000)
    assert balanced_share(2, **costs, device_rate=10_000) == 0  # workers barely read enough
    assert balanced_share(15, **costs, device_rate=10) == MAX_PILLOW_SHARE
    assert balanced_share(4, read=0.01, pillow=0.01, device_rate=100) == MAX_PILLOW_SHARE


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 1 / 3, 0.9, 1.0])
def test_the_pillow_share_is_spread_evenly_over_the_images(share):
    balance = DecoderBalance(workers=1)
    balance.share.fill_(share)
    to_pillow = [balance.to_pillow(k) for k in range(300)]
    assert sum(to_pillow) == round(300 * share)
    for start in range(0, 300, 30):  # every stretch of 30 images gets its share, within one
        assert abs(sum(to_pillow[start:start + 30]) - 30 * share) <= 1


def test_no_worker_process_no_pillow_share():
    balance = DecoderBalance(workers=0)
    assert float(balance.share) == 0
    balance.device_cost(images=8, seconds=0.01)
    assert float(balance.share) == 0 and balance.device_images == 8


@pytest.fixture
def mixed_folder(tmp_path):
    """JPEGs the device takes, and files it leaves to Pillow (PNG, CMYK, rotated, truncated)."""
    root = tmp_path / "mixed"
    for k in range(6):
        _smooth(root / "a" / f"{k}.jpg", seed=k, quality=92)
    _smooth(root / "b" / "plain.png", seed=7)
    _smooth(root / "b" / "cmyk.jpg", seed=8, mode="CMYK", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 8
    _smooth(root / "b" / "rotated.jpg", seed=9, size=(90, 60), exif=exif.tobytes(), quality=92)
    _smooth(root / "b" / "gray.jpg", seed=10, mode="L", quality=92)
    data = _smooth(root / "b" / "cut.jpg", seed=11, quality=92).read_bytes()
    (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])
    make_image(root / "b" / "noise.jpg", seed=12, quality=95)
    return root


def _features(root, tmp_path, decode, device="cpu", jpeg_decoder="auto"):
    config = ExtractConfig(backbones="resnet18", weights="random",
                           cache_root=str(tmp_path / decode / jpeg_decoder), batch_size=4,
                           workers=0, progress=False, decode=decode, device=device,
                           precision="fp32", jpeg_decoder=jpeg_decoder)
    [report] = extract(from_folder(root), config)
    return read_features(report.path)


def test_device_path_gives_the_cpu_paths_rows(tmp_path, mixed_folder):
    cpu = _features(mixed_folder, tmp_path, "cpu")
    device = _features(mixed_folder, tmp_path, "device")
    assert device.ids == cpu.ids and len(cpu.ids) == 11
    assert device.skipped == cpu.skipped and list(cpu.skipped) == ["b/cut.jpg"]
    cosine = (cpu.X * device.X).sum(1) / (
        np.linalg.norm(cpu.X, axis=1) * np.linalg.norm(device.X, axis=1))
    assert cosine.min() > 0.99, cosine


def test_the_jpeg_decoder_is_a_choice_that_changes_no_feature(tmp_path, mixed_folder):
    """On the CPU both decoders give Pillow's pixels, so the rows are bitwise equal; the
    report and extract_config.json name the decoder that ran."""
    rows = {name: _features(mixed_folder, tmp_path, "device", jpeg_decoder=name)
            for name in JPEG_DECODERS}
    codec, vision = rows["torchcodec"], rows["torchvision"]
    assert codec.ids == vision.ids and codec.skipped == vision.skipped
    assert np.array_equal(codec.X, vision.X)
    saved = json.loads((tmp_path / "device" / "torchvision" / "mixed" / "extract_config.json")
                       .read_text())
    assert saved["jpeg_decoder"] == "torchvision" and saved["decode"] == "device"


def test_auto_extraction_reports_the_decoder_it_used(tmp_path, mixed_folder):
    config = ExtractConfig(backbones="resnet18", weights="random", cache_root=str(tmp_path),
                           batch_size=4, workers=0, progress=False, decode="device",
                           device="cpu", precision="fp32")
    [report] = extract(from_folder(mixed_folder), config)
    assert report.jpeg_decoder == "torchcodec" and report.device_decoded == 8  # the 6 in a/, gray, noise
    config.decode, config.cache_root = "cpu", str(tmp_path / "cpu")
    [report] = extract(from_folder(mixed_folder), config)
    assert report.jpeg_decoder is None and report.device_decoded is None


def test_decode_option_is_checked_when_the_config_is_built(tmp_path):
    with pytest.raises(ValueError, match="unknown --decode 'gpu'"):
        ExtractConfig(backbones="resnet18", decode="gpu")
    with pytest.raises(ValueError, match="unknown --jpeg-decoder 'dali'"):
        ExtractConfig(backbones="resnet18", decode="device", jpeg_decoder="dali")
    with pytest.raises(ValueError, match="--jpeg-decoder chooses nvJPEG's library for --decode "
                                         "device; it has no use with --decode cpu"):
        ExtractConfig(backbones="resnet18", decode="cpu", jpeg_decoder="torchvision")
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        ExtractConfig(backbones="resnet18", batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("decoder", list(JPEG_DECODERS))
def test_cuda_device_decoding_matches_pillow(tmp_path, mixed_folder, decoder):
    cpu = _features(mixed_folder, tmp_path, "cpu", device="cuda")
    device = _features(mixed_folder, tmp_path, "device", device="cuda", jpeg_decoder=decoder)
    assert device.ids == cpu.ids and device.skipped == cpu.skipped
    cosine = (cpu.X * device.X).sum(1) / (
        np.linalg.norm(cpu.X, axis=1) * np.linalg.norm(device.X, axis=1))
    assert cosine.min() > 0.99, cosine
    assert get_spec("resnet18").feature_dim == cpu.X.shape[1]


def test_the_share_follows_costs_that_change_along_the_collection():
    """Recent costs weigh most: after 10 half-lives of larger images the share is theirs,
    not the average of the whole run's."""
    from featbank.extraction.devicedecode import BALANCE_HALF_LIFE

    balance = DecoderBalance(workers=4)
    rate, batch = 1_000.0, 256

    def run(images: int, read: float, pillow: float) -> None:
        for _ in range(images // batch):
            to_pillow = round(batch * float(balance.share))
            balance.costs[1, DecoderBalance.READ] += torch.tensor([read * (batch - to_pillow),
                                                                    batch - to_pillow])
            balance.costs[1, DecoderBalance.PILLOW] += torch.tensor([pillow * to_pillow,
                                                                      to_pillow])
            balance.device_cost(batch - to_pillow, (batch - to_pillow) / rate)

    run(20 * BALANCE_HALF_LIFE, read=1e-4, pillow=2e-3)
    small = balanced_share(4, read=1e-4, pillow=2e-3, device_rate=rate)
    assert float(balance.share) == pytest.approx(small, rel=1e-6)
    run(10 * BALANCE_HALF_LIFE, read=1e-4, pillow=1e-2)  # five times the pixels
    large = balanced_share(4, read=1e-4, pillow=1e-2, device_rate=rate)
    assert large < small / 2
    assert float(balance.share) == pytest.approx(large, rel=0.01)
