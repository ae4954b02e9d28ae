"""A fine-tuning run: train (or resume), test the best weights, export the trunk.

A registry backbone with a new linear head (:mod:`featbank.finetuning.model`)
retrained on a task's saved split (:mod:`featbank.finetuning.data`). A
multi-label task gets a sigmoid per class instead: binary cross-entropy
while training, mAP in the results row.

Defaults follow Sabatelli et al.: SGD lr 1e-3 with Nesterov momentum 0.9,
batch 32, no augmentation, early stopping once the validation loss has not
improved for 7 epochs, the best-validation-loss weights restored and tested.

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
from tqdm import tqdm

from featbank.core.fileio import atomic_path, atomic_write_json, hold_lock, safe_name
from featbank.core.hashing import stamp_images, stamps_digest, write_stamps
from featbank.core.settings import digest, identity
from featbank.data.collection import Collection
from featbank.data.saved_splits import load_or_make_split
from featbank.data.tasks import Split
from featbank.evaluation.metrics import hits, metrics
from featbank.evaluation.plots import plot_history
from featbank.evaluation.reports import result_row, save_test_scores, write_reports
from featbank.finetuning.config import FinetuneConfig
from featbank.finetuning.data import datasets, epoch_seed, make_loader
from featbank.finetuning.epochs import evaluate_model, train_one_epoch
from featbank.finetuning.model import (
    FineTuneNet,
    apply_freeze,
    build_trunk,
    init_weights,
    make_loss,
    make_optimizer,
)
from featbank.models.inference import (
    MEMORY_FORMATS,
    resolve_device,
    resolve_layout,
    resolve_precision,
)
from featbank.models.registry import BackboneSpec, get_spec
from featbank.models.trunks import Weights, export_trunk, stages
from featbank.store.results import append_result, load_results

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]



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

    @property
    def compute(self) -> dict:
        """How the run computes: ``precision`` (autocast) and ``layout`` (models.inference)."""
        return {"precision": resolve_precision(self.config.precision, self.device),
                "layout": resolve_layout(self.config.precision, self.device)}

    @property
    def store(self) -> Path:
        """The results store's folder, ``<cache>/<collection>``: rows keep paths relative to it."""
        return Path(self.config.cache_root) / self.collection.name

    def checkpoint(self, epoch: int, best_loss: float, waited: int, history: list) -> None:
        _atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "epoch": epoch, "best_loss": best_loss, "waited": waited,
                      "history": history, "identity": self.digest, **self.description()},
                     self.folder / "last.pt")

    def description(self) -> dict:
        """What a checkpoint or exported trunk says about itself (plain values only)."""
        fit = sorted(set(self.data["train"].ids) | set(self.data["val"].ids))
        return {"backbone": self.spec.name, "feature_dim": self.spec.feature_dim,
                "preprocess": dataclasses.asdict(self.pre), "parent_weights": self.init.exact,
                "collection": self.collection.name, "task": self.config.task,
                "classes": list(self.split.classes), "settings": self.settings,
                # the images the trunk saw while training and choosing its epoch: its
                # features are never tested on them (classification.cells)
                "fit_ids": fit}

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
        val_loader = make_loader(self.data["val"], c, shuffle=False, epoch=0, device=device)
        if not history:
            val, *_ = evaluate_model(self.model, val_loader, self.loss_fn, self.pre, device,
                                     **self.compute)
            history.append({"epoch": 0, "train_loss": None, "train_acc": None,
                            **_validation(val), "seconds": 0.0})
            best_loss = val["loss"]
            _atomic_save({"model": self.model.state_dict(), **self.description()},
                             self.folder / "best.pt")
        resumed_from = epoch
        scaler = torch.amp.GradScaler(device.type, enabled=self.compute["precision"] == "fp16")
        while epoch < c.epochs and waited < c.patience:
            epoch += 1
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(c, epoch))  # augmentation in the main process (workers=0)
            loader = make_loader(self.data["train"], c, shuffle=True, epoch=epoch, device=device)
            with tqdm(total=len(self.data["train"]), unit="img", disable=not c.progress,
                      desc=f"epoch {epoch}", leave=False) as bar:
                train = train_one_epoch(self.model, loader, self.optimizer, self.loss_fn,
                                        self.pre, device, scaler, bar, **self.compute)
            val, *_ = evaluate_model(self.model, val_loader, self.loss_fn, self.pre, device,
                                     **self.compute)
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
            loader = make_loader(self.data[part], self.config, shuffle=False, epoch=0,
                             device=self.device)
            _, scores, targets, decodable = evaluate_model(self.model, loader, self.loss_fn,
                                                           self.pre, self.device, **self.compute)
            truth = targets if self.split.multi_label else classes[targets]  # see metrics
            results[part] = metrics(truth, scores, classes, ci=part == "test",
                                    seed=self.split.spec.seed)
        write_reports(self.folder / "test", truth, classes[scores.argmax(1)], classes, scores)
        tested = [i for i, ok in zip(self.data["test"].ids, decodable) if ok]
        paired = {}
        if self.split.multi_label:  # the store's folder holds the run folders
            paired["test_scores"] = save_test_scores(
                self.store, str((self.folder / "test_scores.npz").relative_to(self.store)), tested, truth,
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
            inputs={"split": self.split.digest, "images": self.settings["images"]},
            split_group_by=self.split.spec.group_by, freeze=c.freeze, init=c.init, epochs_run=history[-1]["epoch"],
            best_epoch=min(history, key=lambda h: h["val_loss"])["epoch"],
            trunk_path=str((self.folder / "trunk.pth").relative_to(self.store)),
            run=str(self.folder.relative_to(self.store)), **extra)


def _prepare(collection: Collection, config: FinetuneConfig, log) -> _Run:
    """Resolve the settings, build the model, optimizer and datasets of a run.

    The run folder is made last: a run that fails before training leaves nothing.
    """
    device = resolve_device(config.device)
    spec = get_spec(config.backbone)
    init = init_weights(spec, config.init, config.seed)
    cache_folder = Path(config.cache_root) / collection.name
    split = load_or_make_split(collection, config.task, config.split, cache_folder,
                               resplit=config.resplit, warn=log)
    # What the run learns from: the split and the images' bytes (read once here), so that
    # a relabelled collection or a changed image starts a new run, not a stale resume.
    images = stamp_images({i: collection.path(i) for i in split.ids})
    # Random and file inits keep their id (unchanged run folders); imagenet is pinned.
    settings = {**identity(config), "init": init.exact if init.id == "imagenet" else init.id,
                "split": split.digest, "images": stamps_digest(images)}
    run_digest = digest(settings)
    folder = cache_folder / "finetune" / f"{safe_name(config.task)}__{safe_name(spec.name)}__{run_digest}"
    pre = spec.preprocess if config.image_size is None else \
        dataclasses.replace(spec.preprocess, input_size=config.image_size)
    torch.manual_seed(config.seed)
    model = FineTuneNet(build_trunk(spec, config.init, config.seed, progress=config.progress),
                        spec.feature_dim, len(split.classes))
    n_frozen = apply_freeze(model, config.freeze)
    model.to(device)
    model.to(memory_format=MEMORY_FORMATS[resolve_layout(config.precision, device)])
    data = datasets(collection, split, split.classes, pre, config,
                    untested=_trained_on(init, collection, log))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", {**asdict(config), "identity": settings,
                                               "images_root": str(collection.root.resolve())})
    write_stamps(folder / "images.csv", images)
    log(f"{spec.name} on {device.type}: {resolve_precision(config.precision, device)}, "
        f"{resolve_layout(config.precision, device).replace('_', '-')}, "
        f"{torch.get_num_threads()} threads")
    log(f"{spec.name} on {collection.name}/{config.task}: {len(split.classes)} classes, "
        f"{len(data['train'])}/{len(data['val'])}/{len(data['test'])} train/val/test images, "
        f"{n_frozen} of {len(stages(model.trunk))} stages frozen; run folder {folder}")
    return _Run(config=config, spec=spec, collection=collection, split=split, folder=folder,
                settings=settings, digest=run_digest, init=init, model=model,
                optimizer=make_optimizer(model, config),
                loss_fn=make_loss(data["train"].targets, len(split.classes), config.balanced,
                                  split.multi_label).to(device), data=data, pre=pre,
                device=device, log=log)


def _trained_on(init: Weights, collection: Collection, log) -> frozenset:
    """The images a fine-tuned trunk used as the init was trained on, when they are of this
    collection: the run never tests on them (a second fine-tuning on the same images)."""
    if init.trained_on is None or init.trained_on[0] != collection.name:
        return frozenset()
    log(f"the init trunk was fine-tuned on {len(init.trained_on[1])} images of "
        f"{collection.name}; they are left out of the test part")
    return init.trained_on[1]


def finetune(collection: Collection, config: FinetuneConfig, *, log=print) -> FinetuneResult:
    """Train (or resume), test the best-validation-loss weights, export the trunk.

    A run whose cell is already in the store and that trains nothing new adds no row.
    """
    run = _prepare(collection, config, log)
    # One process trains a run at a time: a second one with the same settings waits,
    # then resumes from the first's last checkpoint (usually: nothing left to train).
    # The lock lives in finetune/.locks/, so the run folders stand alone (a glob of them
    # matches folders only), as feature files' locks do in features/.locks/.
    waiting = f"another process is training {run.folder.name} with these settings; waiting"
    locks = run.folder.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with hold_lock(str(locks / f"{run.folder.name}.lock"), on_wait=lambda: log(waiting)):
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
