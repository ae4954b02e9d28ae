"""Networks for the analyses that look inside them (layers, top-images, saliency).

A trunk is rebuilt from what a user names: ``imagenet``, ``random``, a
weights file, or a fine-tuning run folder (its exported ``trunk.pth``); a
run also gives back its classifier head, classes, task and split. Its stages
are the units ``finetune.py --freeze`` counts (:func:`featbank.models.trunks.stages`);
:func:`stage_activations` runs collection images through a trunk and keeps
each chosen stage's output, global-average-pooled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from featbank.core.errors import BadInput, MissingFile
from featbank.data.collection import Collection
from featbank.data.images import decode_views, normalize
from featbank.data.preprocess import Preprocess
from featbank.data.tasks import SplitSpec
from featbank.models.layers import Layer, layers, pooling
from featbank.models.registry import BackboneSpec, get_spec
from featbank.models.trunks import (
    Weights,
    load_described_trunk,
    read_weights_file,
    resolve_weights,
)

LAST = "last"


@dataclass
class Network:
    """A frozen trunk with what it is; a fine-tuning run adds its head and classes."""

    spec: BackboneSpec
    trunk: nn.Module
    weights: Weights
    preprocess: Preprocess
    label: str  # for captions and JSON: imagenet, random, a file or run name
    head: nn.Module | None = None
    classes: list[str] = field(default_factory=list)
    task: str | None = None
    split: SplitSpec | None = None

    @property
    def stages(self) -> list["Stage"]:
        return named_stages(self.trunk)


def load_network(backbone: str, weights: str, *, option: str = "--weights",
                 progress: bool = True) -> Network:
    """``weights``: imagenet, random, a weights file (state_dict, checkpoint, exported
    trunk) or a fine-tuning run folder. A file of another backbone is refused."""
    source = trunk_source(weights, option)
    spec = get_spec(backbone)
    resolved = resolve_weights(spec, source, option=option)
    trunk, description = load_described_trunk(spec, source, option=option, progress=progress)
    preprocess = _preprocess(description.get("preprocess")) or spec.preprocess
    label = weights if weights in ("imagenet", "random") else _label(weights)
    return Network(spec, trunk, resolved, preprocess, label)


def load_run(run: str, *, progress: bool = True) -> Network:
    """The fine-tuned classifier of a run folder: trunk (``trunk.pth``), head (``best.pt``),
    classes, task and split."""
    folder = Path(run)
    trunk_file = _trunk_file(run, "--run")
    _, description = read_weights_file(trunk_file)
    if not description.get("backbone") or not description.get("classes"):
        raise BadInput(f"{trunk_file} does not say which backbone and classes it has; "
                         "is it from finetune.py?")
    network = load_network(description["backbone"], str(trunk_file), option="--run",
                           progress=progress)
    best = folder / "best.pt"
    try:
        state = torch.load(best, map_location="cpu", weights_only=True)["model"]
        weight, bias = state["head.weight"], state["head.bias"]
    except FileNotFoundError:
        raise MissingFile(f"{folder} has no best.pt: the run's head is missing") from None
    except (KeyError, TypeError, RuntimeError) as err:
        raise BadInput(f"{best} holds no fine-tuned head ({err})") from None
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    network.head = head.eval().requires_grad_(False)
    network.classes = list(description["classes"])
    network.task = description.get("task")
    network.label = folder.name
    config = folder / "config.json"
    if config.is_file():
        split = json.loads(config.read_text()).get("split")
        network.split = SplitSpec(**split) if isinstance(split, dict) else None
    return network


def trunk_source(weights: str, option: str = "--weights") -> str:
    """What ``load_trunk`` takes for ``weights``: imagenet, random, or a file (a run
    folder's ``trunk.pth``); resolving it costs nothing."""
    return weights if weights in ("imagenet", "random") else _trunk_file(weights, option)


def _trunk_file(weights: str, option: str) -> str:
    """A run folder stands for its ``trunk.pth``; a file for itself."""
    path = Path(weights)
    if path.is_dir():
        if not (path / "trunk.pth").is_file():
            raise MissingFile(f"{option} {weights}: the folder has no trunk.pth (finetune.py "
                                    "writes it when a run ends)")
        return str(path / "trunk.pth")
    if not path.is_file():
        raise MissingFile(f"{option} {weights}: no such weights file or run folder "
                                "(use imagenet, random, a weights file or a run folder)")
    return str(path)


def _preprocess(stored: dict | None) -> Preprocess | None:
    if not isinstance(stored, dict):
        return None
    return Preprocess(**{**stored, "mean": tuple(stored["mean"]), "std": tuple(stored["std"])})


def _label(weights: str) -> str:
    path = Path(weights)
    return path.parent.name if path.name == "trunk.pth" else path.name


# -- stages ------------------------------------------------------------------------------

Stage = Layer  # a unit of models.trunks.stages, its norm layers joined


def named_stages(trunk: nn.Module) -> list[Stage]:
    """The units ``finetune.py --freeze`` counts, input first (the trunk's output left out)."""
    return [layer for layer in layers(trunk, opened=False) if layer.modules]


def pick_stage(stage_list: list[Stage], wanted: str, backbone: str) -> Stage:
    """``last``, a number from 1 (nearest the input) or a stage's name."""
    wanted = str(wanted).strip()
    if wanted == LAST:
        return stage_list[-1]
    for stage in stage_list:
        if wanted in (str(stage.index), stage.name) or wanted in stage.name.split("+"):
            return stage
    raise BadInput(f"unknown --stage {wanted!r}; {backbone} has stages 1-{len(stage_list)}: "
                     + ", ".join(s.name for s in stage_list) + " (or last)")


def weight_distance(a: Stage, b: Stage) -> float:
    """Relative distance of the stage's parameters, ||θ_b - θ_a|| / ||θ_a||."""
    pa, pb = a.parameters(), b.parameters()
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise BadInput(f"stage {a.name} differs in shape between the two trunks")
    diff = sum(float(((q.double() - p.double()) ** 2).sum()) for p, q in zip(pa, pb))
    norm = sum(float((p.double() ** 2).sum()) for p in pa)
    return float(np.sqrt(diff / norm)) if norm > 0 else float("nan")


# -- images --------------------------------------------------------------------------------

class _Views(Dataset):
    """Item k -> (uint8 view (3, S, S), decoded?) of image ``paths[k]``."""

    def __init__(self, paths: list[Path], pre: Preprocess):
        self.paths, self.pre = paths, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        [view], reason = decode_views(self.paths[k], [self.pre])
        return view, not reason


def sample_ids(ids: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``ids`` drawn without replacement (seeded), in their order; all when n >= len."""
    if n <= 0 or n >= len(ids):
        return list(ids)
    chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return [ids[k] for k in sorted(chosen)]


def image_views(paths: list[Path], pre: Preprocess, *, batch_size: int = 32, workers: int = 0):
    """Yields (uint8 views (B, 3, S, S), decoded mask (B,)) in ``paths`` order."""
    loader = DataLoader(_Views(paths, pre), batch_size=batch_size, num_workers=workers,
                        shuffle=False)
    for views, ok in loader:
        yield views, ok.bool()


def stage_activations(network: Network, collection: Collection, ids: list[str],
                      chosen: list[Stage], *, device: torch.device, batch_size: int = 32,
                      workers: int = 0, progress: Callable = lambda it, **_: it,
                      preprocess: Preprocess | None = None
                      ) -> tuple[list[str], list[np.ndarray | None]]:
    """Pooled outputs of the ``chosen`` stages for the images ``ids`` that decode.

    Returns (kept ids, one (n_kept, C) float32 array per stage, None for a
    stage the eval forward pass never runs). The last stage's output is the
    trunk's own output: the vector the feature cache holds.
    """
    pre = preprocess or network.preprocess
    trunk = network.trunk.to(device)
    last = network.stages[-1]
    outputs: dict[int, list[torch.Tensor]] = {s.index: [] for s in chosen}
    current: dict[int, torch.Tensor] = {}

    def hook(index):
        def keep(module, inputs, output):
            current[index] = pooling(output, "gap").cpu()
        return keep

    handles = [s.modules[-1].register_forward_hook(hook(s.index)) for s in chosen
               if s.index != last.index]
    kept = []
    try:
        batches = image_views([collection.path(i) for i in ids], pre, batch_size=batch_size,
                              workers=workers)
        start = 0
        for views, ok in progress(batches, desc=f"{network.spec.name} ({network.label[:24]})",
                                  total=-(-len(ids) // batch_size), unit="batch"):
            batch_ids = ids[start:start + len(views)]
            start += len(views)
            current.clear()
            with torch.no_grad():
                final = pooling(trunk(normalize(views.to(device), pre)), "gap").cpu()
            current[last.index] = final
            for index in outputs:
                if index in current:
                    outputs[index].append(current[index][ok])
            kept += [i for i, good in zip(batch_ids, ok.tolist()) if good]
    finally:
        for handle in handles:
            handle.remove()
    return kept, [torch.cat(outputs[s.index]).numpy() if outputs[s.index] else None
                  for s in chosen]
