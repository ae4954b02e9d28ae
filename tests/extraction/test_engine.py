import csv

import numpy as np
import pytest
import torch
from helpers import make_image

import featbank.data.images as images
from featbank.data.collection import from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.store.features import read_features
from featbank.store.writer import FeatureWriter


def _config(tmp_path, **kw):
    settings = dict(backbones="squeezenet1_1", weights="random", cache_root=str(tmp_path / "cache"),
                    batch_size=4, workers=0, progress=False, device="cpu")
    settings.update(kw)
    return ExtractConfig(**settings)


@pytest.fixture
def count_decodes(monkeypatch):
    """The images the loader reads to decode (each read once, its bytes then decoded)."""
    import featbank.extraction.loader as loader

    calls = []
    real = loader.read_stamped

    def counting(path):
        calls.append(path)
        return real(path)
    monkeypatch.setattr(loader, "read_stamped", counting)
    return calls


def test_extract_writes_contract_file(tmp_path, image_folder):
    collection = from_folder(image_folder)
    [report] = extract(collection, _config(tmp_path))
    data = read_features(report.path)
    assert data.X.shape == (12, 512) and data.X.dtype == np.float32
    assert sorted(data.ids) == collection.ids
    assert np.isfinite(data.X).all()
    for key in ("backbone", "feature_dim", "weights", "input_size", "mean", "std",
                "featbank_version", "torch_version"):
        assert key in data.provenance
    assert (tmp_path / "cache" / "images" / "extract_config.json").is_file()


def test_the_saved_settings_name_the_workers_the_run_had(tmp_path, image_folder):
    import json

    from featbank.core.settings import default_workers

    extract(from_folder(image_folder), _config(tmp_path, workers=None))
    saved = json.loads((tmp_path / "cache" / "images" / "extract_config.json").read_text())
    assert saved["workers"] == default_workers("cpu") and saved["decode"] == "auto"


def test_rerun_decodes_nothing_and_new_images_only(tmp_path, image_folder, count_decodes):
    extract(from_folder(image_folder), _config(tmp_path))
    first = read_features(tmp_path / "cache/images/features/squeezenet1_1__random.h5")
    count_decodes.clear()
    extract(from_folder(image_folder), _config(tmp_path))
    assert count_decodes == []
    make_image(image_folder / "cats" / "new.png", seed=99)
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert [p.name for p in count_decodes] == ["new.png"] and report.n_new == 1
    after = read_features(report.path)
    assert after.ids[:12] == first.ids and np.array_equal(after.X[:12], first.X)
    assert after.ids[12] == "cats/new.png"


def test_interrupted_run_resumes_to_identical_rows(tmp_path, image_folder, monkeypatch):
    collection = from_folder(image_folder)
    [clean] = extract(collection, _config(tmp_path / "clean"))
    real_add = FeatureWriter.add_batch
    calls = []

    def dying_add(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_add(self, *args, **kwargs)
    monkeypatch.setattr(FeatureWriter, "add_batch", dying_add)
    with pytest.raises(KeyboardInterrupt):
        extract(collection, _config(tmp_path / "killed"))
    monkeypatch.setattr(FeatureWriter, "add_batch", real_add)
    [resumed] = extract(collection, _config(tmp_path / "killed"))
    assert resumed.n_new == 4  # 12 images, two batches of 4 survived
    a, b = read_features(clean.path), read_features(resumed.path)
    assert a.ids == b.ids and np.array_equal(a.X, b.X)


def test_several_backbones_decode_each_image_once(tmp_path, image_folder, count_decodes):
    reports = extract(from_folder(image_folder),
                      _config(tmp_path, backbones="squeezenet1_1,alexnet,timm:test_resnet"))
    assert len(count_decodes) == 12
    assert [r.n_rows for r in reports] == [12, 12, 12]
    dims = [read_features(r.path).X.shape[1] for r in reports]
    assert dims == [512, 256, 96]


def test_undecodable_images_are_listed_not_fatal(tmp_path, image_folder):
    (image_folder / "dogs" / "broken.jpg").write_bytes(b"garbage")
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert report.n_rows == 12 and report.n_skipped == 1
    with open(tmp_path / "cache/images/skipped.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["id"] == "dogs/broken.jpg" and "cannot identify" in rows[0]["reason"]


def test_float16_storage_and_no_silent_mixing(tmp_path, image_folder):
    [report] = extract(from_folder(image_folder), _config(tmp_path, dtype="float16"))
    assert read_features(report.path).X.dtype == np.float16
    with pytest.raises(ValueError, match="dtype='float16'"):
        extract(from_folder(image_folder), _config(tmp_path, dtype="float32"))


def test_bad_settings_fail_when_the_config_is_built(tmp_path):
    for bad, match in [({"device": "tpu"}, "unknown --device 'tpu'"),
                       ({"backbones": "nope"}, "unknown backbone"),
                       ({"batch_size": 0}, "--batch-size must be at least 1"),
                       ({"workers": -1}, "--workers must be at least 0"),
                       ({"dtype": "int8"}, "unknown --dtype")]:
        with pytest.raises(ValueError, match=match):
            _config(tmp_path, **bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_gpu_is_an_error_even_when_nothing_is_left_to_do(tmp_path, image_folder):
    extract(from_folder(image_folder), _config(tmp_path))
    with pytest.raises(ValueError, match="no CUDA device|no NVIDIA driver"):
        extract(from_folder(image_folder), _config(tmp_path, device="cuda"))


def test_every_file_is_a_row_or_a_listed_reason(tmp_path):
    """The issue's folder: 3 JPEGs, a palette GIF, a text file and an empty .jpg -> 4 rows."""
    from PIL import Image

    root = tmp_path / "museum"
    for k in range(3):
        make_image(root / "vases" / f"{k}.jpg", seed=k)
    Image.fromarray(np.arange(48 * 40, dtype=np.uint8).reshape(40, 48) % 7 * 30).convert(
        "P", palette=Image.Palette.ADAPTIVE).save(root / "vases" / "anim.gif")
    (root / "vases" / "notes.txt").write_text("catalogue notes")
    (root / "vases" / "empty.jpg").write_bytes(b"")
    make_image(root / "icons" / "jpeg_named.png", seed=9, fmt="JPEG")  # by content, not name
    make_image(root / "icons" / "no_extension", seed=10, fmt="PNG")
    make_image(root / "icons" / "plain.jpg", seed=11)
    for litter in (".DS_Store", "Thumbs.db", ".hidden.jpg", "__MACOSX/vases/._0.jpg"):
        (root / "vases" / litter).parent.mkdir(parents=True, exist_ok=True)
        (root / "vases" / litter).write_bytes(b"\0\1")
    (root / "icons" / "loop").symlink_to(root / "icons")  # never followed: no hang
    collection = from_folder(root)
    assert collection.ignored == 4 and "vases/notes.txt" in collection.ids
    [report] = extract(collection, _config(tmp_path))
    assert report.n_rows == 7 and report.n_skipped == 2
    assert set(read_features(report.path).ids) == {
        "vases/0.jpg", "vases/1.jpg", "vases/2.jpg", "vases/anim.gif",
        "icons/jpeg_named.png", "icons/no_extension", "icons/plain.jpg"}
    with open(tmp_path / "cache/museum/skipped.csv") as fh:
        reasons = {r["id"]: r["reason"] for r in csv.DictReader(fh)}
    assert reasons.keys() == {"vases/notes.txt", "vases/empty.jpg"}
    assert reasons["vases/empty.jpg"] == "empty file (0 bytes)"
    assert "cannot identify image file" in reasons["vases/notes.txt"]


def test_skipped_csv_is_always_written_with_its_header(tmp_path, image_folder):
    extract(from_folder(image_folder), _config(tmp_path))
    assert (tmp_path / "cache/images/skipped.csv").read_text().splitlines() == ["id,reason"]


def test_a_failed_extraction_leaves_no_feature_file(tmp_path, image_folder):
    (tmp_path / "bad.pth").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="bad.pth is not a readable PyTorch state_dict"):
        extract(from_folder(image_folder), _config(tmp_path, weights=str(tmp_path / "bad.pth")))
    assert not list((tmp_path / "cache/images/features").glob("*.h5"))


def _loader(image_folder, *, jpeg_bytes, workers=0, balance=None):
    from featbank.extraction.loader import Images, collate
    from featbank.models.registry import get_spec

    collection = from_folder(image_folder)
    paths = [collection.path(i) for i in collection.ids]
    pres = [get_spec("squeezenet1_1").preprocess]
    dataset = Images(paths, pres, jpeg_bytes=jpeg_bytes, balance=balance)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=workers,
                                         collate_fn=collate)
    return loader, pres, paths


def test_decoding_ahead_in_a_thread_keeps_the_batches_and_their_order(image_folder):
    from featbank.extraction.loader import batches_on_device

    loader, pres, paths = _loader(image_folder, jpeg_bytes=True)
    cpu = torch.device("cpu")
    inline = list(batches_on_device(loader, pres, cpu, paths, decode_ahead=False))
    ahead = list(batches_on_device(loader, pres, cpu, paths, decode_ahead=True))
    assert [b.index.tolist() for b, _, _ in ahead] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    for (_, views, reasons), (_, same, why) in zip(ahead, inline):
        assert reasons == why and torch.equal(views[0], same[0])


def test_a_failure_while_decoding_ahead_reaches_the_caller_after_the_batches_before(
        image_folder, monkeypatch):
    import featbank.extraction.loader as extract_module

    real = extract_module.device_views

    def failing(batch, *args):
        if batch.index[0] == 5:
            raise OSError("disk gone")
        return real(batch, *args)
    monkeypatch.setattr(extract_module, "device_views", failing)
    loader, pres, paths = _loader(image_folder, jpeg_bytes=True)
    batches = extract_module.batches_on_device(loader, pres, torch.device("cpu"), paths,
                                                decode_ahead=True)
    assert next(batches)[0].index.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="disk gone"):
        next(batches)


def test_workers_hand_pillow_views_channels_last(image_folder):
    loader, pres, paths = _loader(image_folder, jpeg_bytes=False, workers=1)
    batch = next(iter(loader))
    [view] = batch.cpu_views
    assert view.shape == (5, 3, 224, 224) and view.is_contiguous(memory_format=torch.channels_last)
    expected = torch.stack([images.decode_views(p, pres)[0][0] for p in paths[:5]])
    assert torch.equal(view, expected)


def test_workers_send_the_balances_share_to_pillow_and_time_both_paths(image_folder):
    from featbank.extraction.devicedecode import DecoderBalance

    balance = DecoderBalance(workers=2)
    balance.share.fill_(0.5)  # set here, read by the worker processes
    loader, _, _ = _loader(image_folder, jpeg_bytes=True, workers=2, balance=balance)
    batches = list(loader)
    # images 1, 3, 5, ... to Pillow; positions within batches of 5
    assert [b.cpu_at for b in batches] == [[1, 3], [0, 2, 4], [1]]
    assert [b.jpeg_at for b in batches] == [[0, 2, 4], [1, 3], [0]]
    seconds, counts = balance.costs.unbind(-1)
    assert counts[0].sum() == 0 and counts[1:].sum(0).tolist() == [6, 6]  # [read, pillow]
    assert (seconds[1:].sum(0) > 0).all() and counts[1].sum() > 0 and counts[2].sum() > 0


def test_a_share_set_while_the_workers_run_reaches_them(image_folder):
    from featbank.extraction.devicedecode import DecoderBalance
    from featbank.extraction.loader import Images, collate
    from featbank.models.registry import get_spec

    collection = from_folder(image_folder)
    balance = DecoderBalance(workers=1)
    balance.share.fill_(0.0)
    dataset = Images([collection.path(i) for i in collection.ids],
                      [get_spec("squeezenet1_1").preprocess], jpeg_bytes=True, balance=balance)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1,
                                              prefetch_factor=2, collate_fn=collate))
    batches = [next(loader)]
    balance.share.fill_(1.0)  # batch 3 is asked of the worker once batch 1 is taken, after this
    batches += list(loader)
    assert batches[0].cpu_at == [] and len(batches) == 6
    assert [b.cpu_at for b in batches[3:]] == [[0, 1]] * 3


def test_decoding_ahead_rebalances_from_the_costs_it_measured(image_folder, monkeypatch):
    import featbank.extraction.devicedecode as devicedecode
    from featbank.extraction.loader import batches_on_device

    calls, real = [], devicedecode.balanced_share
    monkeypatch.setattr(devicedecode, "balanced_share",
                        lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    balance = devicedecode.DecoderBalance(workers=1)
    assert float(balance.share) == devicedecode.FIRST_PILLOW_SHARE
    loader, pres, paths = _loader(image_folder, jpeg_bytes=True, workers=1, balance=balance)
    batches = list(batches_on_device(loader, pres, torch.device("cpu"), paths,
                                      decode_ahead=True, balance=balance))
    assert sum(len(b.reasons) for b, _, _ in batches) == 12
    assert balance.device_images == sum(len(b.jpeg_at) for b, _, _ in batches) > 0
    (read_s, pillow_s), (reads, pillows) = balance.costs.sum(0).unbind(-1)
    assert reads == balance.device_images and pillows == 12 - reads > 0  # image 9 at least
    # Once both paths had a cost, each device batch set the share from the costs so far.
    assert calls and all(a == (1,) and kw["device_rate"] > 0 for a, kw in calls)
    assert float(balance.share) == real(*calls[-1][0], **calls[-1][1])
    assert calls[-1][1]["read"] == pytest.approx(float(read_s / reads), rel=0.5)
    assert calls[-1][1]["pillow"] == pytest.approx(float(pillow_s / pillows), rel=0.5)


def test_extract_reports_what_the_device_decoded(tmp_path, image_folder):
    [cpu] = extract(from_folder(image_folder), _config(tmp_path / "cpu", workers=2))
    [device] = extract(from_folder(image_folder),
                       _config(tmp_path / "device", workers=2, decode="device+pillow"))
    assert cpu.device_decoded is None and 0 < device.device_decoded < 12  # Pillow's share
    [alone] = extract(from_folder(image_folder),
                      _config(tmp_path / "alone", workers=2, decode="device"))
    assert alone.device_decoded == 12  # without the share, every JPEG to the device
    ours, theirs = read_features(device.path), read_features(cpu.path)
    assert ours.ids == theirs.ids
    cosine = (ours.X * theirs.X).sum(1) / (
        np.linalg.norm(ours.X, axis=1) * np.linalg.norm(theirs.X, axis=1))
    assert cosine.min() > 0.98, cosine


def test_a_collection_where_nothing_decodes_is_bad_input_and_leaves_no_file(tmp_path):
    root = tmp_path / "broken"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            (root / cls / f"{k}.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(ValueError, match=r"no image of collection 'broken' could be decoded "
                                         r"\(6 listed with their reasons in .*skipped.csv\)"):
        extract(from_folder(root), _config(tmp_path))
    assert not list((tmp_path / "cache/broken/features").glob("*.h5"))
    lines = (tmp_path / "cache/broken/skipped.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0] == "id,reason"


def test_a_run_whose_weights_cannot_be_had_leaves_no_collection_behind(tmp_path, image_folder,
                                                                       monkeypatch):
    """Offline, ImageNet weights cannot be downloaded: one line, and no collection folder
    that later commands would list."""
    from featbank.data.sources import cached_names

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached there
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        extract(from_folder(image_folder), _config(tmp_path, weights="imagenet"))
    assert cached_names(tmp_path / "cache") == [] and not (tmp_path / "cache" / "images").exists()


def test_a_run_says_which_precision_layout_threads_and_compile_it_chose(tmp_path, image_folder,
                                                                       capsys):
    extract(from_folder(image_folder), _config(tmp_path, precision="fp32"))
    said = capsys.readouterr().err
    assert "squeezenet1_1 on cpu: fp32 (asked for), contiguous, " in said
    assert f"{torch.get_num_threads()} threads, 0 decoding workers, not compiled" in said
    make_image(image_folder / "cats" / "one more.png", seed=77)
    extract(from_folder(image_folder), _config(tmp_path))  # auto: the file's precision
    assert "squeezenet1_1 on cpu: fp32 (as the file records), contiguous" in \
        capsys.readouterr().err
