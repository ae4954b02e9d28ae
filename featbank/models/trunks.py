"""The torch side of the registry: build a trunk with its weights, freeze it, export it.

``load_trunk(spec, weights)`` returns a module in eval mode with gradients
off: batch-norm statistics are fixed, which is what "frozen" must mean
(Sabatelli et al.'s near-zero off-the-shelf ResNet50 / Inception-V3 artist
scores are the symptom of BN left in training mode).

Weights are ``"imagenet"`` (the exact published weights the registry pins,
read from torch's or Hugging Face's cache, downloaded when missing),
``"random"`` (seeded, reproducible) or a path to a state_dict of the trunk,
a featbank checkpoint or an exported trunk (loaded with ``weights_only=True``,
strict on the trunk's keys). :func:`resolve_weights` says which exact weights
a name stands for, offline.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featbank.core.errors import BadInput, MissingFile
from featbank.core.fileio import atomic_path, first_line
from featbank.core.hashing import file_sha256
from featbank.models.registry import RANDOM_SEED, SESSION, BackboneSpec, weights_id
from featbank.store.provenance import weights_label

LOG = logging.getLogger("featbank")  # notes the user should see once, on stderr
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
# ``--weights random``: the library's own initialisation of the architecture, seeded.
# (Fine-tuning's ``--init random`` is another one, He-uniform: see finetuning.model.)
RANDOM_EXACT = f"random:library-init:seed{RANDOM_SEED}"
TRUNK_FORMAT = "featbank-trunk/1"


class WeightsUnavailableError(MissingFile):
    """Pretrained weights are neither cached nor downloadable."""


# -- which weights ----------------------------------------------------------------

@dataclass(frozen=True)
class Weights:
    """What a trunk's weights are.

    id : ``imagenet``, ``random`` or ``sha256:<hex>`` (in file names and tables).
    exact : the exact weights: ``torchvision:resnet50.IMAGENET1K_V2``,
        ``timm:legacy_xception.tf_in1k``, ``random:library-init:seed0`` (the
        library's own initialisation, seeded) or the file's ``sha256:<hex>``.
    published_hash : the checkpoint hash its publisher gives (torchvision's
        sha256 prefix in the file name), else None.
    source : for a weights file, its absolute path when extracted (a hint for
        rebuilding the trunk later, e.g. ``analyze.py retrieve --query``).
    """

    id: str
    exact: str
    published_hash: str | None = None
    source: str = ""
    label: str = ""  # what tables show: see weights_label
    # A trunk featbank fine-tuned: the collection and the ids of its images the trunk was
    # trained or validated on (its features are never tested on them).
    trained_on: tuple[str, frozenset] | None = None

    def attrs(self) -> dict:
        return {"weights": self.id, "weights_exact": self.exact,
                "weights_hash": self.published_hash or "", "weights_source": self.source,
                "weights_label": self.label or weights_label(self.id, self.exact)}


def resolve_weights(spec: BackboneSpec, weights: str, *, option: str = "--weights") -> Weights:
    """The exact weights ``weights`` means for ``spec`` (offline: nothing is downloaded)."""
    wid = weights_id(weights, option=option)
    if wid == "random":
        return Weights(wid, RANDOM_EXACT)
    if wid == "module":  # a session network (models.custom): its state_dict's digest
        digest = SESSION[spec.name][1]
        return Weights(digest, f"{spec.name}:{digest}",
                       label=f"{spec.name} ({digest[:19]})")
    if wid != "imagenet":
        source = str(Path(weights).resolve())
        try:
            description = read_weights_file(weights, mmap=True)[1]
        except (OSError, ValueError):
            description = {}  # loading the trunk reports what is wrong with the file
        trained_on = None
        if description.get("fit_ids") is not None:
            trained_on = (str(description.get("collection")), frozenset(description["fit_ids"]))
        return Weights(wid, wid, source=source,
                       label=weights_label(wid, wid, description, source), trained_on=trained_on)
    if spec.imagenet is None:
        raise BadInput(f"{spec.name} has no published ImageNet weights; use {option} PATH "
                         "(a state_dict) or random")
    url = _checkpoint_url(spec)
    published = _published_hash(url)
    if published:
        check_pinned_file(spec, cached_checkpoint(url), published, option=option)
    return Weights(wid, spec.imagenet.exact, f"sha256:{published}" if published else None)


def _published_hash(url: str | None) -> str | None:
    """The sha256 prefix a publisher puts in a checkpoint's file name (``-b8a52dc0.pth``)."""
    match = torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1]) if url else None
    return match.group(1) if match else None


def check_pinned_file(spec: BackboneSpec, path: Path, published: str, *,
                      option: str = "--weights") -> None:
    """Refuse a file at a pinned checkpoint's name whose bytes are not that checkpoint's.

    torch.hub checks the hash when it downloads; a file copied there by hand is not
    checked, and rows made with it would be labelled with weights they are not.
    """
    if not path.is_file():
        return
    found = file_sha256(path)
    if not found.startswith(published):
        raise BadInput(
            f"{path} has the name of {spec.imagenet.exact} (sha256 {published}...) but its "
            f"sha256 is {found[:12]}...: it is another file. Delete it (featbank downloads the "
            f"published file when it can), or use it as what it is with {option} {path}")


def _checkpoint_url(spec: BackboneSpec) -> str | None:
    pin = spec.imagenet
    if pin.source == "torchvision":
        from torchvision.models import get_model_weights

        return get_model_weights(pin.model)[pin.tag].url
    import timm

    cfg = timm.models.get_pretrained_cfg(f"{pin.model}.{pin.tag}")
    return None if cfg is None or cfg.hf_hub_id else cfg.url


def cached_checkpoint(url: str) -> Path:
    """Where torch.hub keeps the file of ``url`` ($TORCH_HOME/hub/checkpoints/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


# -- building and loading -----------------------------------------------------------

def load_trunk(spec: BackboneSpec, weights: str = "imagenet", *, option: str = "--weights",
               progress: bool = True) -> nn.Module:
    """The frozen trunk: eval mode, no gradients. Output: (B, spec.feature_dim)."""
    return load_described_trunk(spec, weights, option=option, progress=progress)[0]


def load_described_trunk(spec: BackboneSpec, weights: str = "imagenet", *,
                         option: str = "--weights", progress: bool = True) -> tuple[nn.Module, dict]:
    """The frozen trunk and what its weights file says about itself (see
    :func:`read_weights_file`; empty for imagenet and random)."""
    description = {}
    if weights == "imagenet":
        trunk = build_pretrained(spec, option=option, progress=progress)
    elif weights == "module":
        trunk = spec.build(False)
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            trunk = spec.build(False)
    else:
        trunk = spec.build(False)
        description = load_state_dict_file(trunk, weights, spec=spec)
    return freeze(trunk), description


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def build_pretrained(spec: BackboneSpec, *, option: str = "--weights",
                     progress: bool = True) -> nn.Module:
    """The trunk with the exact ImageNet weights the registry pins for it.

    A torchvision checkpoint is read from torch's cache, downloaded there
    first when missing; a cached file that does not fit is named in one line.
    """
    if spec.imagenet is None:
        raise BadInput(f"{spec.name} has no published ImageNet weights; use {option} PATH "
                         "(a state_dict) or random")
    url = _checkpoint_url(spec)
    if url is not None:
        path = _fetch(spec, url, option=option, progress=progress)
        if spec.imagenet.source == "torchvision":
            trunk = spec.build(True)
            try:
                load_state_dict_file(trunk, path, spec=spec)
            except ValueError as err:
                raise BadInput(f"{err}; it is in torch's weights cache: delete it to download "
                                 f"it again, or use {option} PATH or random") from None
            return trunk
    try:
        return spec.build(True)  # timm's loader: Hugging Face cache, or the file fetched above
    except (OSError, ConnectionError) as err:  # URLError, HF LocalEntryNotFoundError
        raise WeightsUnavailableError(
            f"ImageNet weights {spec.imagenet.exact} for {spec.name} are not cached and cannot "
            f"be downloaded ({type(err).__name__}); put the Hugging Face repo of "
            f"{spec.imagenet.model}.{spec.imagenet.tag} in the HF cache (HF_HOME), "
            f"or use {option} PATH (a state_dict) or {option} random") from None
    except RuntimeError as err:
        raise BadInput(f"cached ImageNet weights of {spec.name} do not load ({first_line(err)}); "
                         f"delete them to download again, or use {option} PATH or random") from None


def _fetch(spec: BackboneSpec, url: str, *, option: str, progress: bool) -> Path:
    """The checkpoint in torch's cache, downloaded (hash-checked) when missing.

    Done here rather than by torch.hub so that an offline machine gets one
    line, not torch's "Downloading: ..." before a traceback.
    """
    path = cached_checkpoint(url)
    if path.is_file():
        check_pinned_file(spec, path, _published_hash(url) or "", option=option)
        return path
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), match.group(1) if match else None,
                                           progress=progress)
    except Exception as err:  # URLError, OSError, hash mismatch (RuntimeError)
        raise WeightsUnavailableError(
            f"ImageNet weights {spec.imagenet.exact} for {spec.name} are not cached and cannot "
            f"be downloaded ({type(err).__name__}); place {url} at {path}, or use {option} "
            f"PATH (a state_dict) or {option} random") from None
    return path


def read_weights_file(path: str | os.PathLike, *, mmap: bool = False) -> tuple[dict, dict]:
    """(the trunk's state_dict, what the file says about itself) of a weights file.

    The file holds a plain state_dict (no description), an exported trunk
    (``format``, ``state_dict`` and its description: backbone, preprocess,
    classes, ...) or a featbank checkpoint (``model`` with ``trunk.*`` and
    ``head.*`` keys, beside the same description). ``mmap`` maps the tensors
    instead of reading them (enough for the description).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise MissingFile(f"weights file {path} not found") from None
    except Exception as err:
        raise BadInput(f"{path} is not a readable PyTorch state_dict ({first_line(err)})") from None
    description = {}
    if isinstance(state, dict) and state.get("format") == TRUNK_FORMAT:
        description = {k: v for k, v in state.items() if k != "state_dict"}
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a featbank checkpoint
        description = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
        state = {k.removeprefix("trunk."): v for k, v in state["model"].items()
                 if k.startswith("trunk.")}
    if not isinstance(state, dict):
        raise BadInput(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state, description


def load_state_dict_file(module: nn.Module, path: str | os.PathLike, *,
                         spec: BackboneSpec | None = None) -> dict:
    """Load weights strictly; only the classifier keys of ``spec`` may be extra.

    ``path`` is any file :func:`read_weights_file` reads. An exported trunk of
    another backbone is refused. Returns the file's description.
    """
    state, description = read_weights_file(path)
    if (spec is not None and description.get("format") == TRUNK_FORMAT
            and description.get("backbone") not in (None, spec.name)):
        raise BadInput(f"{path} is a {description['backbone']} trunk, not {spec.name}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = set(module.state_dict())
    head_prefixes = spec.head_prefixes if spec is not None else ()
    missing = sorted(expected - set(state))
    dropped = sorted(k for k in set(state) - expected if k.startswith(head_prefixes))
    extra = sorted(k for k in set(state) - expected if not k.startswith(head_prefixes))
    name = spec.name if spec else "this backbone"
    if missing or extra:
        found = [_keys(len(keys), what, keys) for what, keys in
                 (("missing", missing), ("unexpected", extra)) if keys]
        raise BadInput(f"{path} does not fit {name}: {', '.join(found)}; is it the weights of "
                       "another architecture?")
    if dropped:
        LOG.warning(f"{Path(path).name}: the classifier's {len(dropped)} keys "
                    f"({', '.join(dropped[:2])}{', ...' if len(dropped) > 2 else ''}) are "
                    f"not part of {name}'s trunk; dropped")
    try:
        module.load_state_dict({k: state[k] for k in expected}, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise BadInput(f"{path} does not fit {spec.name if spec else 'this backbone'}: "
                         f"{first}") from None
    return description


def _keys(n: int, what: str, keys: list[str]) -> str:
    return f"{n} {what} key{'s' * (n != 1)}" + (f" (e.g. {keys[0]!r})" if keys else "")


def export_trunk(trunk: nn.Module, path: str | os.PathLike, **description) -> None:
    """Write a self-describing trunk for ``extract.py --weights PATH``, atomically.

    The file loads with ``torch.load(path, weights_only=True)``: a dict with
    ``format``, ``state_dict`` and the ``description`` (backbone, feature_dim,
    preprocess, parent weights, task, classes, ...), all plain values.
    """
    with atomic_path(path) as tmp:
        torch.save({"format": TRUNK_FORMAT, **description,
                    "state_dict": trunk.state_dict()}, tmp)


# -- structure ------------------------------------------------------------------------

def stages(trunk: nn.Module) -> list[list[nn.Module]]:
    """The trunk's parameterised top-level units in forward order (norm layers join the previous).

    What ``finetune.py --freeze`` counts and what layer-wise analysis compares.
    """
    module = trunk
    while True:
        units = [c for c in module.children() if next(c.parameters(), None) is not None]
        if len(units) != 1:
            break
        module = units[0]
    grouped: list[list[nn.Module]] = []
    for unit in units:
        if isinstance(unit, NORM_LAYERS) and grouped:
            grouped[-1].append(unit)
        else:
            grouped.append([unit])
    return grouped
