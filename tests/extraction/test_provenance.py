"""Rows made differently never share a file: precision, decoding, TF32 and library releases
are provenance, a resumed run that differs is refused in one line naming the key, and
--force-new keeps the old file aside and starts a new one. Layout and folded batch norms
are recorded, and a --precision auto run follows them."""
import h5py
import pytest
from helpers import make_image

from featbank.core.errors import BadInput
from featbank.data.collection import from_folder
from featbank.extraction.config import ExtractConfig
from featbank.extraction.engine import extract
from featbank.store.features import read_features


def _folder(root, n=4):
    for cls in ("a", "b"):
        for k in range(n):
            make_image(root / cls / f"{k}.jpg", seed=10 * ord(cls) + k, size=(40, 40), quality=90)
    return root


def _extract(root, cache, backbones="squeezenet1_1", **settings):
    config = ExtractConfig(backbones=backbones, weights="random", cache_root=str(cache),
                           workers=0, batch_size=4, progress=False, **settings)
    return extract(from_folder(root), config)


def test_the_file_records_how_its_rows_were_made(tmp_path):
    [report] = _extract(_folder(tmp_path / "art"), tmp_path / "cache")
    from featbank.core.hardware import native_bf16

    attrs = read_features(report.path).provenance
    # --precision auto on a CPU: bf16 where it is native (and kept within 1 % of fp32)
    assert attrs["decode"] == "pillow" and attrs["precision"] in (
        ("bf16", "fp32") if native_bf16() else ("fp32",))
    assert attrs["memory_format"] == "channels_last" and attrs["compiled"] in (False, 0)
    assert attrs["tf32"] is False or attrs["tf32"] == 0
    assert attrs["torch_release"].count(".") == 1 and attrs["torchvision_release"]


@pytest.mark.parametrize("first,then,key,new", [
    ({"precision": "fp32"}, {"precision": "bf16"}, "precision", "bf16"),
    ({"precision": "bf16"}, {"precision": "fp32"}, "precision", "fp32"),
    ({"decode": "cpu"}, {"decode": "device"}, "decode", "nvjpeg:")])
def test_a_resumed_run_made_otherwise_is_refused_naming_the_key(tmp_path, first, then, key, new):
    root = _folder(tmp_path / "art")
    [report] = _extract(root, tmp_path / "cache", **first)
    make_image(root / "a" / "new.jpg", seed=99, size=(40, 40), quality=90)  # work to do
    with pytest.raises(BadInput) as err:
        _extract(root, tmp_path / "cache", **then)
    message = str(err.value)
    assert f"holds rows made with {key}=" in message and "--force-new" in message
    assert "\n" not in message
    assert read_features(report.path).X.shape[0] == 8  # nothing was added or lost
    [again] = _extract(root, tmp_path / "cache", **then, force_new=True)
    assert again.n_rows == 9 and read_features(again.path).provenance[key].startswith(new)
    [kept] = (tmp_path / "cache/art/features/replaced").glob("*/*.h5")
    assert read_features(kept).X.shape[0] == 8  # the old rows, whole and readable


def test_auto_precision_continues_in_the_file_s_precision(tmp_path):
    root = _folder(tmp_path / "art")
    [report] = _extract(root, tmp_path / "cache", precision="bf16")
    make_image(root / "b" / "new.jpg", seed=98, size=(40, 40), quality=90)
    [grown] = _extract(root, tmp_path / "cache", precision="auto")  # fp32 on a CPU otherwise
    assert grown.n_rows == 9 and read_features(grown.path).provenance["precision"] == "bf16"


def test_a_file_from_before_these_keys_reads_as_the_values_of_its_time(tmp_path):
    """Pillow, fp32, no TF32 and the releases of the versions it records: a run that
    agrees grows it; one that does not is refused in one line (the file is not stamped
    with whatever the run brings)."""
    root = _folder(tmp_path / "art")
    [report] = _extract(root, tmp_path / "cache")
    with h5py.File(report.path, "a") as f:  # as a file written before they existed
        for key in ("decode", "precision", "tf32", "torch_release", "torchvision_release"):
            del f.attrs[key]
    make_image(root / "a" / "new.jpg", seed=97, size=(40, 40), quality=90)
    with pytest.raises(BadInput, match="holds rows made with precision='fp32'; this run would "
                                       "make them with precision='bf16'"):
        _extract(root, tmp_path / "cache", precision="bf16")
    [grown] = _extract(root, tmp_path / "cache", precision="auto")  # continues in fp32
    attrs = read_features(grown.path).provenance
    assert grown.n_rows == 9 and attrs["decode"] == "pillow" and attrs["precision"] == "fp32"
    with h5py.File(report.path, "a") as f:
        f.attrs["torch_version"] = "1.13.1"  # its release then differs from this torch's
        del f.attrs["torch_release"]
    make_image(root / "b" / "new.jpg", seed=96, size=(40, 40), quality=90)
    with pytest.raises(BadInput, match="torch_release='1.13'"):
        _extract(root, tmp_path / "cache")


def test_batch_norms_are_folded_where_the_sums_may_change_and_a_resume_follows_the_file(
        tmp_path, capsys):
    root = _folder(tmp_path / "art")
    [folded] = _extract(root, tmp_path / "a", backbones="resnet18")
    assert read_features(folded.path).provenance["fold_bn"] in (True, 1)
    assert "resnet18 on cpu: " in (said := capsys.readouterr().err)
    assert ", channels-last, batch norms folded, " in said
    [exact] = _extract(root, tmp_path / "b", backbones="resnet18", precision="fp32")
    assert read_features(exact.path).provenance["fold_bn"] in (False, 0)  # sums of before
    [plain] = _extract(root, tmp_path / "c")  # SqueezeNet has no batch norm to fold
    assert read_features(plain.path).provenance["fold_bn"] in (False, 0)
    with h5py.File(folded.path, "a") as f:  # as a file written before folding existed
        del f.attrs["fold_bn"]
    capsys.readouterr()
    make_image(root / "a" / "new.jpg", seed=95, size=(40, 40), quality=90)
    [grown] = _extract(root, tmp_path / "a", backbones="resnet18")
    assert grown.n_rows == 9 and "batch norms folded" not in capsys.readouterr().err
    assert read_features(grown.path).provenance.get("fold_bn", False) in (False, 0)
