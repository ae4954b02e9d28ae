import math

import numpy as np
import pytest
import torch
from helpers import make_image

import featbank.finetuning.train as ft
from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import from_folder, from_manifest
from featbank.data.tasks import SplitSpec
from featbank.evaluation.metrics import hits
from featbank.evaluation.reports import load_test_scores
from featbank.evaluation.stats import mean_average_precision
from featbank.evaluation.tables import build_table
from featbank.extraction.engine import ExtractConfig, extract
from featbank.finetuning.epochs import train_one_epoch
from featbank.finetuning.model import (
    FineTuneNet,
    apply_freeze,
    frozen_count,
    he_uniform_,
    make_loss,
)
from featbank.finetuning.train import FinetuneConfig, finetune
from featbank.models.registry import BACKBONES, get_spec
from featbank.models.trunks import load_trunk, stages
from featbank.store.results import load_results

SCENARIOS = ["none", "1", "2", "last:3", "last:1"]  # Cetinic et al.'s five


@pytest.fixture
def folder20(tmp_path):
    root = tmp_path / "art"
    for c, cls in enumerate(["icon", "vase"]):
        for k in range(12):
            make_image(root / cls / f"{k}.png", seed=100 * c + k, size=(48, 48))
    return root


def _config(tmp_path, **kw):
    settings = dict(backbone="squeezenet1_1", task="label", init="random", epochs=2,
                    image_size=48, batch_size=8, workers=0, cache_root=str(tmp_path / "cache"),
                    progress=False, split=SplitSpec(min_per_class=3))
    settings.update(kw)
    return FinetuneConfig(**settings)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_has_stages_for_every_scenario(name):
    trunk = get_spec(name).build(False)
    n = len(stages(trunk))
    assert n >= 3
    counts = [frozen_count(s, n) for s in SCENARIOS]
    assert counts == [0, 1, 2, n - 2, n]


def test_stage_lists_follow_the_architecture():
    resnet = get_spec("resnet18").build(False)
    units = stages(resnet)
    assert [len(u) for u in units] == [2, 1, 1, 1, 1]  # conv1+bn1, layer1..4
    assert units[-1][0] is resnet.layer4
    assert len(stages(get_spec("squeezenet1_1").build(False))) == 9
    with pytest.raises(ValueError, match="--freeze 'top'"):
        frozen_count("top", 5)
    with pytest.raises(ValueError, match="K <= 5"):
        frozen_count("9", 5)


def test_frozen_stages_get_no_gradients_and_keep_batchnorm_statistics():
    model = FineTuneNet(get_spec("resnet18").build(False), 512, 3)
    apply_freeze(model, "2")  # stem and layer1
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()
    loss = model(torch.randn(4, 3, 64, 64)).sum()
    loss.backward()
    frozen = [model.trunk.conv1, model.trunk.bn1, model.trunk.layer1]
    for module in frozen:
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
        assert not module.training
    assert all(p.grad is not None for p in model.trunk.layer2.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    after = model.state_dict()
    assert torch.equal(stats["trunk.bn1.running_mean"], after["trunk.bn1.running_mean"])
    assert torch.equal(stats["trunk.layer1.0.bn1.running_mean"], after["trunk.layer1.0.bn1.running_mean"])
    assert not torch.equal(stats["trunk.layer2.0.bn1.running_mean"], after["trunk.layer2.0.bn1.running_mean"])


def test_only_the_head_learns_with_trunk_frozen():
    model = FineTuneNet(get_spec("squeezenet1_1").build(False), 512, 2)
    apply_freeze(model, "trunk")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_he_uniform_bounds():
    trunk = get_spec("alexnet").build(False)
    he_uniform_(trunk)
    conv = trunk.features[0]
    bound = math.sqrt(6 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0


def test_finetune_outputs_and_exported_trunk(tmp_path, folder20):
    collection = from_folder(folder20)
    result = finetune(collection, _config(tmp_path), log=lambda m: None)
    run = result.folder
    for name in ("history.csv", "curves.png", "best.pt", "last.pt", "trunk.pth", "config.json",
                 "test_confusion.png"):
        assert (run / name).is_file(), name
    # the run's lock is kept apart, so a glob of run folders matches folders only
    assert sorted(p.name for p in run.parent.iterdir()) == [".locks", run.name]
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    [row] = load_results(tmp_path / "cache" / "art")
    assert row["method"] == "fine-tuning" and row["weights"] == "he-uniform" and row["n_test"] == 2
    assert row["weights_exact"] == "he-uniform:seed0" and row["weights_label"] == "He-uniform (seed 0)"
    trunk = load_trunk(get_spec("squeezenet1_1"), str(run / "trunk.pth"))
    exported = torch.load(run / "trunk.pth", weights_only=True)
    assert exported["backbone"] == "squeezenet1_1" and exported["classes"] == ["icon", "vase"]
    assert exported["task"] == "label" and exported["parent_weights"] == "he-uniform:seed0"
    assert exported["preprocess"]["input_size"] == 48 and exported["feature_dim"] == 512
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert torch.equal(trunk.state_dict()["features.0.weight"], best["trunk.features.0.weight"])
    load_trunk(get_spec("squeezenet1_1"), str(run / "best.pt"))  # a checkpoint loads too


def test_interrupted_run_resumes_to_the_same_result(tmp_path, folder20, monkeypatch):
    collection = from_folder(folder20)
    clean = finetune(collection, _config(tmp_path / "a", epochs=3, augment=True), log=lambda m: None)
    real = train_one_epoch
    calls = []

    def dies_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(ft, "train_one_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(collection, _config(tmp_path / "b", epochs=3, augment=True), log=lambda m: None)
    monkeypatch.setattr(ft, "train_one_epoch", real)
    resumed = finetune(collection, _config(tmp_path / "b", epochs=3, augment=True), log=lambda m: None)
    assert resumed.resumed_from == 1
    for key in ("top1", "top5", "balanced_accuracy", "macro_f1", "val_top1"):
        assert resumed.row[key] == clean.row[key]
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in clean.history]
    a = torch.load(clean.folder / "trunk.pth", weights_only=True)["state_dict"]
    b = torch.load(resumed.folder / "trunk.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("freeze", SCENARIOS)
def test_each_freezing_scenario_runs(tmp_path, folder20, freeze):
    result = finetune(from_folder(folder20), _config(tmp_path, epochs=1, freeze=freeze),
                      log=lambda m: None)
    assert result.row["freeze"] == freeze and np.isfinite(result.row["top1"])


def test_fine_tuning_column_beside_the_heads(tmp_path, folder20):
    """Heads on a trunk's features and fine-tuning from that trunk share a table row;
    random features (the library's init) and fine-tuning from scratch (He-uniform) do not."""
    collection = from_folder(folder20)
    trunk_file = tmp_path / "trunk.pth"
    torch.save(load_trunk(get_spec("squeezenet1_1"), "random").state_dict(), trunk_file)
    cache = str(tmp_path / "cache")
    for weights in (str(trunk_file), "random"):
        extract(collection, ExtractConfig(backbones="squeezenet1_1", weights=weights,
                                          cache_root=cache, workers=0, progress=False))
    spec = SplitSpec(min_per_class=3)
    classify(collection, ClassifyConfig(heads="logreg", cache_root=cache, split=spec, jobs=1),
             warn=lambda m: None)
    for init in (str(trunk_file), "random"):
        finetune(collection, _config(tmp_path, epochs=1, init=init), log=lambda m: None)
    rows = load_results(tmp_path / "cache" / "art")
    assert len({r["test_ids_sha256"] for r in rows}) == 1  # one split for both methods
    columns, records = build_table(rows, split_tag=spec.tag)
    assert columns[-1] == "fine-tuning" and "logreg" in columns
    by_weights = {r["weights"]: r for r in records}
    assert len(records) == 3, by_weights.keys()
    from_file = next(r for w, r in by_weights.items() if w.startswith("file trunk.pth"))
    assert from_file["logreg"] is not None and from_file["fine-tuning"] is not None
    assert by_weights["random"].get("fine-tuning") is None
    assert by_weights["He-uniform (seed 0)"].get("logreg") is None


def test_bad_settings(tmp_path, folder20):
    collection = from_folder(folder20)
    for bad, match in [({"freeze": "most"}, "--freeze"), ({"optimizer": "lion"}, "unknown --optimizer"),
                       ({"epochs": 0}, "--epochs must be at least 1"),
                       ({"epochs": -1}, "--epochs must be at least 1"),
                       ({"patience": 0}, "--patience"), ({"lr": 0.0}, "--lr must be positive"),
                       ({"device": "gpu"}, "unknown --device"), ({"backbone": "all"}, "one backbone")]:
        with pytest.raises(ValueError, match=match):
            _config(tmp_path, **bad)
    with pytest.raises(ValueError, match="unknown task"):
        finetune(collection, _config(tmp_path, task="genre"), log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="not found"):
        finetune(collection, _config(tmp_path, init="nope.pth"), log=lambda m: None)
    assert not (tmp_path / "cache" / "art" / "finetune").exists()  # nothing trained, no run folder


def test_rerun_of_a_finished_run_adds_no_row(tmp_path, folder20):
    collection = from_folder(folder20)
    first = finetune(collection, _config(tmp_path, epochs=1), log=lambda m: None)
    again = finetune(collection, _config(tmp_path, epochs=1), log=lambda m: None)
    assert again.resumed_from == 1 and again.row == first.row
    assert len(load_results(tmp_path / "cache" / "art")) == 1


@pytest.fixture
def tagged(tmp_path):
    """30 images, each with one or two of three tags (a manifest with a multi-label column)."""
    root = tmp_path / "tagged"
    rows = ["file,tags"]
    for k in range(30):
        make_image(root / f"{k}.png", seed=k, size=(48, 48))
        tags = ["a", "b", "c"][k % 3] + (";" + ["b", "c", "a"][k % 3] if k % 2 else "")
        rows.append(f"{k}.png,{tags}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return from_manifest(root / "tags.csv", multi_label=["tags"])


def test_multi_label_task_trains_with_binary_cross_entropy(tmp_path, tagged):
    config = _config(tmp_path, task="tags", split=SplitSpec(min_per_class=3), balanced=True)
    result = finetune(tagged, config, log=lambda m: None)
    row = result.row
    assert 0 <= row["mAP"] <= 1 and row["mAP_ci"][0] <= row["mAP"] <= row["mAP_ci"][1]
    assert row["balanced_accuracy"] is None and row["n_classes"] == 3
    assert all("val_mAP" in h for h in result.history)
    per_class = (result.folder / "test_per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,average_precision,positives" and len(per_class) == 4
    store = tmp_path / "cache" / tagged.name  # the paired test of mAP reads the scores there
    assert row["test_scores"] == f"finetune/{result.folder.name}/test_scores.npz"
    stored = load_test_scores(store, row)
    assert stored["truth"].shape == stored["scores"].shape == (row["n_test"], 3)
    assert mean_average_precision(stored["truth"], stored["scores"])[0] == \
        pytest.approx(row["mAP"], abs=1e-6)
    assert "mAP_resamples" not in row and len(stored["map_resamples"]) == 1000
    run = _prepare_quietly(tagged, config)
    assert isinstance(run.loss_fn, torch.nn.BCEWithLogitsLoss)
    targets = run.data["train"].targets  # float 0/1 rows, columns in class order
    assert targets.dtype == torch.float32 and targets.shape[1] == 3
    assert set(targets.sum(1).tolist()) <= {1.0, 2.0}
    # balanced: each class's positives weigh its negatives / positives
    positives = targets.sum(0)
    assert torch.allclose(run.loss_fn.pos_weight.cpu(), (len(targets) - positives) / positives)


def _prepare_quietly(collection, config):
    return ft._prepare(collection, config, lambda m: None)


def test_multi_label_hits_and_loss_agree_with_their_definitions():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert hits(targets.numpy(), logits.numpy(), np.arange(3)).tolist() == [True, False]
    assert hits(np.array([0, 2]), logits.numpy(), np.arange(3)).tolist() == [True, False]
    loss = make_loss(targets, 3, balanced=False, multi_label=True)
    expected = -(targets * torch.log(torch.sigmoid(logits))
                 + (1 - targets) * torch.log(1 - torch.sigmoid(logits))).mean()
    assert torch.isclose(loss(logits, targets), expected)


def test_repeats_train_one_run_per_seeded_split(tmp_path, folder20):
    config = _config(tmp_path, epochs=1, seed=3, split=SplitSpec(min_per_class=3, seed=3),
                     repeats=2)
    repeats = config.repeated()
    assert [(c.seed, c.split.seed, c.repeats) for c in repeats] == [(3, 3, 1), (4, 4, 1)]
    folders = {finetune(from_folder(folder20), c, log=lambda m: None).folder for c in repeats}
    rows = load_results(tmp_path / "cache" / "art")
    assert len(folders) == 2 and len({r["split_tag"] for r in rows}) == 2
    columns, records = build_table(rows, split_tag=[c.split.tag for c in repeats])
    assert records[0]["repeats"]["fine-tuning"] == 2
    with pytest.raises(ValueError, match="--repeats"):
        _config(tmp_path, repeats=0)
