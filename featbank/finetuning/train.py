"""Fine-tuning: a registry backbone + a new softmax layer, retrained on a task's saved split.

A multi-label task (``--multi-label`` at extraction) gets a sigmoid per class
instead: binary cross-entropy while training, mAP in the results row.

Defaults follow Sabatelli et al.: SGD lr 1e-3 with Nesterov momentum 0.9,
batch 32, no augmentation, early stopping once the validation loss has not
improved for 7 epochs, the best-validation-loss weights restored and tested.

Freezing (``freeze``) counts *stages*: the trunk's top-level parameterised
units in forward order (a norm layer joins the unit before it), e.g. ResNet50:
stem, layer1..layer4; SqueezeNet: conv1 and eight fire modules. Cetinic et
al.'s five scenarios are ``none`` (all layers), ``1`` (skip the first), ``2``
(skip the first two), ``last:3`` (only the last three units, the new head
counting as one) and ``last:1`` = ``trunk`` (only the head). Frozen stages
keep batch-norm in eval mode.

Every epoch writes a checkpoint; a run started again with the same settings
continues after its last finished epoch and ends as an uninterrupted one
would (data order and augmentation are seeded per epoch).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from featbank.models.registry import BackboneSpec, get_spec
from featbank.core.fileio import safe_name
from featbank.data.collection import Collection
from featbank.finetuning.config import FinetuneConfig
from featbank.core.settings import digest, identity
from featbank.store.results import append_result, load_results
from featbank.evaluation.metrics import hits, metrics
from featbank.evaluation.reports import result_row, save_test_scores, write_reports
from featbank.core.fileio import atomic_path, atomic_write_json, hold_lock
from featbank.data.images import decode_views, min_decode_size, normalize
from featbank.models.inference import resolve_device, resolve_workers, training_autocast
from featbank.evaluation.plots import plot_history
from featbank.evaluation.stats import mean_average_precision
from featbank.data.tasks import Split, balanced_weights, load_or_make_split, subsample
from featbank.models.trunks import (NORM_LAYERS, Weights, build_pretrained, export_trunk, load_state_dict_file,
                     resolve_weights, stages)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "apply_freeze", "frozen_count"]


# -- the model ------------------------------------------------------------------

class FineTuneNet(nn.Module):
    """trunk (B, 3, S, S) -> (B, feature_dim) GAP vectors -> head -> (B, n_classes) logits."""

    def __init__(self, trunk: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(feature_dim, n_classes)
        # A zero head: the first steps train the head alone, and the pretrained trunk is
        # not pushed around by a random head's gradients (as in DeiT / MAE fine-tuning).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.frozen: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:  # frozen stages keep their batch-norm statistics
            module.eval()
        return self


def frozen_count(freeze: str, n_stages: int) -> int:
    """How many leading stages ``freeze`` freezes (see the module docstring)."""
    text = str(freeze).strip()
    if text == "none":
        return 0
    if text == "trunk":
        return n_stages
    if text.startswith("last:") and text[5:].isdigit() and int(text[5:]) >= 1:
        return max(0, n_stages - (int(text[5:]) - 1))
    if text.isdigit() and int(text) <= n_stages:
        return int(text)
    raise ValueError(f"--freeze {freeze!r}: use none, trunk, last:N (train the last N units, "
                     f"the head counting as one) or K <= {n_stages} (freeze the first K stages)")


def apply_freeze(model: FineTuneNet, freeze: str) -> int:
    """Freeze leading stages: no gradients, batch-norm in eval mode. Returns their number."""
    units = stages(model.trunk)
    k = frozen_count(freeze, len(units))
    model.frozen = [m for unit in units[:k] for m in unit]
    for module in model.frozen:
        module.requires_grad_(False)
    model.train(model.training)
    return k


def he_uniform_(module: nn.Module) -> None:
    """Keras' he_uniform for every conv and linear weight; zero biases; fresh norm layers."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")  # bound sqrt(6 / fan_in)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORM_LAYERS) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_trunk(spec: BackboneSpec, init: str, seed: int, *, progress: bool = True) -> nn.Module:
    """A trainable trunk: ImageNet, He-uniform random, or loaded from a state_dict / checkpoint."""
    if init == "imagenet":
        return build_pretrained(spec, option="--init", progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = spec.build(False)
        if init == "random":
            he_uniform_(trunk)
            return trunk
    load_state_dict_file(trunk, init, spec=spec)
    return trunk


# -- data -----------------------------------------------------------------------

class LabelledImages(Dataset):
    """Item k -> (uint8 view (3, S, S), target, decoded?) of image ``ids[k]``.

    A target is a class index, or for a multi-label task a float 0/1 vector over
    the classes (the targets of binary cross-entropy).
    """

    def __init__(self, collection: Collection, ids: list[str], targets, pre, augment: bool):
        self.ids, self.targets, self.augment = ids, targets, augment
        self.paths = [collection.path(i) for i in ids]
        # Augmentation: resize 8/7 larger, then a random S x S crop and a random flip.
        self.pre = dataclasses.replace(pre, input_size=round(pre.input_size * 8 / 7)) if augment else pre
        self.size = pre.input_size
        self.min_size = min_decode_size([self.pre])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        [view], reason = decode_views(self.paths[k], [self.pre], min_size=self.min_size)
        if self.augment:
            top, left = torch.randint(0, view.shape[1] - self.size + 1, (2,)).tolist()
            view = view[:, top:top + self.size, left:left + self.size]
            if torch.rand(()) < 0.5:
                view = view.flip(-1)
        return view, self.targets[k], not reason


def _epoch_seed(config: FinetuneConfig, epoch: int) -> int:
    return config.seed * 100_003 + epoch


def _loader(dataset, config: FinetuneConfig, *, shuffle: bool, epoch: int, device) -> DataLoader:
    # Seeded per epoch: order and augmentation do not depend on where a run resumed.
    generator = torch.Generator().manual_seed(_epoch_seed(config, epoch))
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=shuffle,
                      num_workers=resolve_workers(config.workers, device), generator=generator,
                      pin_memory=device.type == "cuda", persistent_workers=False)


# -- one epoch, evaluation ------------------------------------------------------

def _inputs(views, pre, device):
    x = normalize(views.to(device, non_blocking=True), pre)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, whether the highest score names its class (multi-label: one of its classes)."""
    top = logits.argmax(1)
    if targets.ndim == 2:
        return targets.gather(1, top[:, None]).squeeze(1) > 0
    return top == targets


def train_one_epoch(model, loader, optimizer, loss_fn, pre, device, scaler, bar=None) -> dict:
    model.train()
    total, correct, seen = 0.0, 0, 0
    for views, targets, ok in loader:
        if not ok.all():
            views, targets = views[ok], targets[ok]
        targets = targets.to(device, non_blocking=True)
        with training_autocast(device):
            logits = model(_inputs(views, pre, device))
            loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(targets)
        correct += _hits(logits, targets).sum().item()
        seen += len(targets)
        if bar is not None:
            bar.update(len(ok))
    return {"train_loss": total / max(seen, 1), "train_acc": correct / max(seen, 1)}


@torch.inference_mode()
def evaluate(model, loader, loss_fn, pre, device
             ) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Mean loss and accuracy (multi-label: also mAP); scores (n, C) and targets (n,), or
    (n, C) 0/1 for a multi-label task, of the decodable images, in the loader's order;
    and which of the loader's images those are (boolean mask)."""
    model.eval()
    scores, targets_all, masks, total = [], [], [], 0.0
    for views, targets, ok in loader:
        masks.append(np.asarray(ok))
        views, targets = views[ok], targets[ok]
        targets = targets.to(device)
        with training_autocast(device):
            logits = model(_inputs(views, pre, device)).float()
        total += loss_fn(logits, targets).item() * len(targets)
        scores.append(logits.cpu().numpy())
        targets_all.append(targets.cpu().numpy())
    scores, targets = np.concatenate(scores), np.concatenate(targets_all)
    stats = {"loss": total / max(len(targets), 1),
             "acc": float(hits(targets, scores, np.arange(scores.shape[1])).mean())}
    if targets.ndim == 2:
        stats["mAP"] = mean_average_precision(targets, scores)[0]
    return stats, scores, targets, np.concatenate(masks)


def make_loss(targets, n_classes: int, balanced: bool, multi_label: bool) -> nn.Module:
    """Cross-entropy; for a multi-label task binary cross-entropy on each class's logit
    (independent sigmoids). ``balanced`` weighs classes by inverse frequency, or for
    binary cross-entropy weighs each class's positives by its negatives / positives."""
    if multi_label:
        Y = torch.as_tensor(targets, dtype=torch.float32)
        positives = Y.sum(0)
        pos_weight = (len(Y) - positives) / positives.clamp(min=1) if balanced else None
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    weights = (torch.from_numpy(balanced_weights(np.asarray(targets), n_classes))
               if balanced else None)
    return nn.CrossEntropyLoss(weight=weights)


def make_optimizer(model: FineTuneNet, config: FinetuneConfig) -> torch.optim.Optimizer:
    trunk = [p for p in model.trunk.parameters() if p.requires_grad]
    groups = [{"params": model.head.parameters(), "lr": config.head_lr or config.lr}]
    if trunk:
        groups.insert(0, {"params": trunk, "lr": config.lr})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, eps=1e-8)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use sgd, adam or rmsprop")


# -- the run --------------------------------------------------------------------

@dataclass
class FinetuneResult:
    folder: Path
    row: dict
    history: list[dict]
    resumed_from: int  # epochs already done when this call started


def _validation(val: dict) -> dict:
    """A history row's validation columns."""
    return {f"val_{k}": v for k, v in val.items()}


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _datasets(collection: Collection, split: Split, classes: list[str], pre,
              config: FinetuneConfig) -> dict[str, LabelledImages]:
    index = {c: k for k, c in enumerate(classes)}
    data = {}
    for part in ("train", "val", "test"):
        ids, labels = split.select(part)
        if part == "train" and config.train_fraction < 1:
            keep = subsample(np.array(labels), config.train_fraction, config.seed)
            ids, labels = [ids[k] for k in keep], [labels[k] for k in keep]
        targets = (torch.from_numpy(split.indicator(labels).astype(np.float32))
                   if split.multi_label else [index[y] for y in labels])
        data[part] = LabelledImages(collection, ids, targets, pre,
                                    augment=config.augment and part == "train")
    return data


@dataclass
class _Run:
    """Everything one fine-tuning run works with; its steps are the methods below."""

    config: FinetuneConfig
    spec: BackboneSpec
    collection: Collection
    split: Split
    folder: Path  # <cache>/<collection>/finetune/<run>
    settings: dict  # identity(config), the init as its exact weights
    digest: str  # of the settings: a checkpoint resumes only the same run
    init: Weights
    model: FineTuneNet
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    data: dict
    pre: object
    device: torch.device
    log: object

    def checkpoint(self, epoch: int, best_loss: float, waited: int, history: list) -> None:
        _atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "epoch": epoch, "best_loss": best_loss, "waited": waited,
                      "history": history, "identity": self.digest, **self.description()},
                     self.folder / "last.pt")

    def description(self) -> dict:
        """What a checkpoint or exported trunk says about itself (plain values only)."""
        return {"backbone": self.spec.name, "feature_dim": self.spec.feature_dim,
                "preprocess": dataclasses.asdict(self.pre), "parent_weights": self.init.exact,
                "collection": self.collection.name, "task": self.config.task,
                "classes": list(self.split.classes), "settings": self.settings}

    def fit(self) -> tuple[list[dict], int]:
        """Train until early stopping (or ``epochs``), resuming a checkpoint of this run.

        Returns the history (epoch 0 = the untrained head) and the epochs done before.
        """
        c, device = self.config, self.device
        state = _resume(self.folder / "last.pt", self.model, self.optimizer, self.digest)
        history, best_loss, waited, epoch = (state["history"], state["best_loss"],
                                             state["waited"], state["epoch"])
        if epoch:
            self.log(f"resuming after epoch {epoch}")
        val_loader = _loader(self.data["val"], c, shuffle=False, epoch=0, device=device)
        if not history:
            val, *_ = evaluate(self.model, val_loader, self.loss_fn, self.pre, device)
            history.append({"epoch": 0, "train_loss": None, "train_acc": None,
                            **_validation(val), "seconds": 0.0})
            best_loss = val["loss"]
            _atomic_save({"model": self.model.state_dict(), **self.description()},
                             self.folder / "best.pt")
        resumed_from = epoch
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        while epoch < c.epochs and waited < c.patience:
            epoch += 1
            t0 = time.perf_counter()
            torch.manual_seed(_epoch_seed(c, epoch))  # augmentation in the main process (workers=0)
            loader = _loader(self.data["train"], c, shuffle=True, epoch=epoch, device=device)
            with tqdm(total=len(self.data["train"]), unit="img", disable=not c.progress,
                      desc=f"epoch {epoch}", leave=False) as bar:
                train = train_one_epoch(self.model, loader, self.optimizer, self.loss_fn,
                                        self.pre, device, scaler, bar)
            val, *_ = evaluate(self.model, val_loader, self.loss_fn, self.pre, device)
            history.append({"epoch": epoch, **train, **_validation(val),
                            "seconds": round(time.perf_counter() - t0, 2)})
            if val["loss"] < best_loss:
                best_loss, waited = val["loss"], 0
                _atomic_save({"model": self.model.state_dict(), **self.description()},
                             self.folder / "best.pt")
            else:
                waited += 1
            self.checkpoint(epoch, best_loss, waited, history)
            score = f" mAP {val['mAP']:.3f}" if "mAP" in val else ""
            self.log(f"epoch {epoch}: train loss {train['train_loss']:.4f} acc "
                     f"{train['train_acc']:.3f} | val loss {val['loss']:.4f} acc "
                     f"{val['acc']:.3f}{score} [{history[-1]['seconds']:.0f} s]")
        return history, resumed_from

    def test_and_export(self, history: list[dict]) -> dict:
        """Restore the best weights, export the trunk, return the test row."""
        best = torch.load(self.folder / "best.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(best["model"])
        export_trunk(self.model.trunk, self.folder / "trunk.pth", **self.description())
        classes = np.array(self.split.classes)
        results = {}
        for part in ("val", "test"):
            loader = _loader(self.data[part], self.config, shuffle=False, epoch=0,
                             device=self.device)
            _, scores, targets, decodable = evaluate(self.model, loader, self.loss_fn, self.pre,
                                                     self.device)
            truth = targets if self.split.multi_label else classes[targets]  # see metrics
            results[part] = metrics(truth, scores, classes, ci=part == "test",
                                    seed=self.split.spec.seed)
        write_reports(self.folder / "test", truth, classes[scores.argmax(1)], classes, scores)
        tested = [i for i, ok in zip(self.data["test"].ids, decodable) if ok]
        paired = {}
        if self.split.multi_label:  # the store's folder holds the run folders
            store = Path(self.config.cache_root) / self.collection.name
            paired["test_scores"] = save_test_scores(
                store, str((self.folder / "test_scores.npz").relative_to(store)), tested, truth,
                scores, classes, results["test"], self.split.spec.seed)
        return self._row(results, history, tested, hits(truth, scores, classes), **paired)

    def _row(self, results: dict, history: list[dict], test_ids: list[str],
             test_hits: np.ndarray, **extra) -> dict:
        c, data = self.config, self.data
        return result_row(
            collection=self.collection.name, backbone=self.spec.name, weights=self.init.id,
            weights_exact=self.init.exact, weights_label=self.init.attrs()["weights_label"],
            task=c.task, method="fine-tuning", head=None,
            test=results["test"], val=results["val"], n_train=len(data["train"]),
            n_val=len(data["val"]), n_test=len(data["test"]), n_classes=len(self.split.classes),
            feature_dim=self.spec.feature_dim,
            n_params=sum(p.numel() for p in self.model.parameters()),
            seconds=sum(h["seconds"] for h in history), split_tag=self.split.spec.tag,
            test_ids=test_ids, test_hits=test_hits,
            cell=json.dumps([self.collection.name, c.task, self.spec.name, self.init.exact,
                             "fine-tuning", self.digest]),
            split_group_by=self.split.spec.group_by, freeze=c.freeze, init=c.init, epochs_run=history[-1]["epoch"],
            best_epoch=min(history, key=lambda h: h["val_loss"])["epoch"],
            trunk_path=str(self.folder / "trunk.pth"), run=str(self.folder), **extra)


def _prepare(collection: Collection, config: FinetuneConfig, log) -> _Run:
    """Resolve the settings, build the model, optimizer and datasets of a run.

    The run folder is made last: a run that fails before training leaves nothing.
    """
    device = resolve_device(config.device)
    spec = get_spec(config.backbone)
    init = resolve_weights(spec, config.init, option="--init")
    cache_folder = Path(config.cache_root) / collection.name
    split = load_or_make_split(collection, config.task, config.split, cache_folder)
    # Random and file inits keep their id (unchanged run folders); imagenet is pinned.
    settings = {**identity(config), "init": init.exact if init.id == "imagenet" else init.id}
    run_digest = digest(settings)
    folder = cache_folder / "finetune" / f"{safe_name(config.task)}__{safe_name(spec.name)}__{run_digest}"
    pre = spec.preprocess if config.image_size is None else \
        dataclasses.replace(spec.preprocess, input_size=config.image_size)
    torch.manual_seed(config.seed)
    model = FineTuneNet(build_trunk(spec, config.init, config.seed, progress=config.progress),
                        spec.feature_dim, len(split.classes))
    n_frozen = apply_freeze(model, config.freeze)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    data = _datasets(collection, split, split.classes, pre, config)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", {**asdict(config), "identity": settings})
    log(f"{spec.name} on {collection.name}/{config.task}: {len(split.classes)} classes, "
        f"{len(data['train'])}/{len(data['val'])}/{len(data['test'])} train/val/test images, "
        f"{n_frozen} of {len(stages(model.trunk))} stages frozen; run folder {folder}")
    return _Run(config=config, spec=spec, collection=collection, split=split, folder=folder,
                settings=settings, digest=run_digest, init=init, model=model,
                optimizer=make_optimizer(model, config),
                loss_fn=make_loss(data["train"].targets, len(split.classes), config.balanced,
                                  split.multi_label).to(device), data=data, pre=pre,
                device=device, log=log)


def finetune(collection: Collection, config: FinetuneConfig, *, log=print) -> FinetuneResult:
    """Train (or resume), test the best-validation-loss weights, export the trunk.

    A run whose cell is already in the store and that trains nothing new adds no row.
    """
    run = _prepare(collection, config, log)
    # One process trains a run at a time: a second one with the same settings waits,
    # then resumes from the first's last checkpoint (usually: nothing left to train).
    waiting = f"another process is training {run.folder.name} with these settings; waiting"
    with hold_lock(f"{run.folder}.lock", on_wait=lambda: log(waiting)):
        return _train_and_test(run, collection, config, log)


def _train_and_test(run: _Run, collection: Collection, config: FinetuneConfig, log) -> FinetuneResult:
    history, resumed_from = run.fit()
    if history[-1]["epoch"] > config.epochs:
        log(f"this run already trained {history[-1]['epoch']} epochs, more than --epochs "
            f"{config.epochs}; its result stands (other settings start a new run)")
    write_history(run.folder, history)
    row = run.test_and_export(history)
    folder = Path(config.cache_root) / collection.name
    stored = [r for r in load_results(folder) if r.get("cell") == row["cell"]
              and r.get("epochs_run") == row["epochs_run"]]
    # The stored row stands, unless it lacks the per-image scores this one brings (a row
    # from before they were kept); a run continued with more epochs supersedes its cell's row.
    if stored and ("test_scores" in stored[-1] or "test_scores" not in row):
        row = stored[-1]
    else:
        append_result(folder, row, replace=True)
    return FinetuneResult(run.folder, row, history, resumed_from)


def _resume(path: Path, model, optimizer, digest: str) -> dict:
    fresh = {"epoch": 0, "history": [], "best_loss": float("inf"), "waited": 0}
    if not path.is_file():
        return fresh
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("identity") != digest:
        return fresh
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return {k: checkpoint[k] for k in fresh}


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.csv`` and ``curves.png`` (loss and accuracy per epoch)."""
    with atomic_path(run_dir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[-1]))
        writer.writeheader()
        writer.writerows(history)
    plot_history(history, run_dir / "curves.png")
