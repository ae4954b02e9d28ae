"""Backbone registry: name -> spec of a frozen trunk that maps images to GAP vectors.

Every entry is a :class:`BackboneSpec` carrying its preprocessing and the
exact ImageNet weights that ``--weights imagenet`` means for it (a
torchvision enum name or a timm pretrained tag), so no script hard-codes an
input size, a normalisation or "whatever the library's default is today".

This module imports neither torch nor torchvision: the command-line parsers
read the registry, and a bad name must fail in well under two seconds. The
torch side (building, loading, freezing trunks) is :mod:`featbank.models.trunks`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from featbank.core.errors import BadInput, MissingFile
from featbank.core.hashing import file_sha256
from featbank.data.preprocess import Preprocess

RANDOM_SEED = 0


@dataclass(frozen=True)
class Pretrained:
    """The exact published weights ``imagenet`` stands for.

    source : ``torchvision`` (``tag`` is the weights enum member, e.g.
        ``IMAGENET1K_V1``) or ``timm`` (``tag`` is the pretrained tag, e.g. ``tf_in1k``).
    model : the library's model name (``squeezenet1_1``, ``legacy_xception``).
    """

    source: str
    model: str
    tag: str

    @property
    def exact(self) -> str:
        """``torchvision:squeezenet1_1.IMAGENET1K_V1``: recorded in files and results rows."""
        return f"{self.source}:{self.model}.{self.tag}"


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``build(pretrained)`` returns the trunk with fresh weights, built
    as the pretrained model is when ``pretrained`` (not yet loaded, not yet frozen)."""

    name: str
    feature_dim: int
    preprocess: Preprocess
    build: Callable[[bool], object] = field(repr=False)
    imagenet: Pretrained | None = None  # None: no published ImageNet weights
    # Keys of a full-model state_dict that the trunk drops (its classifier);
    # a checkpoint may carry them, nothing else may be extra.
    head_prefixes: tuple[str, ...] = ()
    source: str = "torchvision"


def _torchvision_model(name: str, pretrained: bool, pretrained_kwargs: dict, random_kwargs: dict):
    from torchvision.models import get_model

    # Built as torchvision builds it for its weights (the Inception family then
    # expects transform_input), without loading them: trunks.load_trunk does,
    # from the pinned file, so a trunk-only file loads too.
    return get_model(name, weights=None, **(pretrained_kwargs if pretrained else random_kwargs))


def _tv_features(name: str) -> Callable[[bool], object]:
    def build(pretrained: bool):
        from featbank.models.gap import GapTrunk

        return GapTrunk(_torchvision_model(name, pretrained, {}, {}).features)
    return build


def _tv_pooled(name: str, pretrained_kwargs=None, **random_kwargs) -> Callable[[bool], object]:
    """Models whose forward already ends in GAP -> fc; fc becomes the identity."""
    def build(pretrained: bool):
        from torch import nn

        model = _torchvision_model(name, pretrained, pretrained_kwargs or {}, random_kwargs)
        model.fc = nn.Identity()
        return model
    return build


def _timm_build(model_name: str, tag: str | None) -> Callable[[bool], object]:
    def build(pretrained: bool):
        import timm

        # Pretrained: timm's own loader of the pinned tag (it converts checkpoints).
        name = f"{model_name}.{tag}" if pretrained and tag else model_name
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    return build


def _timm_meta(model_name: str) -> tuple[int, dict]:
    """num_features and data config without allocating weights (meta device)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    return model.num_features, timm.data.resolve_model_data_config(model)


def timm_spec(model_name: str, *, resize: str = "center_crop") -> BackboneSpec:
    """Spec for any timm model, preprocessing from its pretrained config.

    ``imagenet`` is pinned to the model's default pretrained tag in the
    installed timm (``legacy_xception`` -> ``tf_in1k``); the tag is recorded,
    so a timm upgrade that changes it is refused, not mixed in.
    """
    import timm

    if not timm.is_model(model_name):
        raise BadInput(f"unknown timm model {model_name!r}; see timm.list_models()")
    cfg = timm.models.get_pretrained_cfg(model_name)
    tag = cfg.tag if cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file) else None
    dim, data = _timm_meta(model_name)
    pre = Preprocess(input_size=int(data["input_size"][-1]), mean=tuple(data["mean"]),
                     std=tuple(data["std"]), resize=resize,
                     crop_pct=float(data.get("crop_pct", 1.0)) if resize == "center_crop" else 1.0,
                     interpolation=data.get("interpolation", "bilinear"))
    return BackboneSpec(name=f"timm:{model_name}", feature_dim=dim, preprocess=pre,
                        build=_timm_build(model_name, tag), source="timm",
                        imagenet=Pretrained("timm", model_name, tag) if tag else None,
                        head_prefixes=_timm_classifier(cfg))


def _timm_classifier(cfg) -> tuple[str, ...]:
    """The key prefixes of a timm model's classifier (its pretrained config names them,
    e.g. ``classifier`` or ``head.fc``): a full model's weights file may carry them."""
    names = getattr(cfg, "classifier", None) if cfg is not None else None
    names = [names] if isinstance(names, str) else list(names or [])
    return tuple(f"{name}." for name in names)


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise BadInput(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec
    return spec


def _register_torchvision():
    imagenet = Preprocess(input_size=224)
    # The exact weights `imagenet` means: torchvision 0.29's DEFAULT for each, pinned
    # here so that a later DEFAULT (ResNet50 went V1 -> V2 once) is a new choice, not
    # a silent change inside one feature file or table.
    pins = {"vgg19": "IMAGENET1K_V1", "alexnet": "IMAGENET1K_V1", "squeezenet1_1": "IMAGENET1K_V1",
            "resnet50": "IMAGENET1K_V2", "resnet18": "IMAGENET1K_V1",
            "googlenet": "IMAGENET1K_V1", "inception_v3": "IMAGENET1K_V1"}
    pin = {name: Pretrained("torchvision", name, tag) for name, tag in pins.items()}
    for name, dim in {"vgg19": 512, "alexnet": 256, "squeezenet1_1": 512}.items():
        register(BackboneSpec(name, dim, imagenet, _tv_features(name), pin[name],
                              head_prefixes=("classifier.",)))
    for name in ("resnet50", "resnet18"):
        register(BackboneSpec(name, 2048 if name == "resnet50" else 512, imagenet,
                              _tv_pooled(name), pin[name], head_prefixes=("fc.",)))
    # Aux classifiers off. The Google weights expect transform_input (torchvision
    # sets it whenever it loads them).
    google = {"transform_input": True, "aux_logits": False, "init_weights": False}
    register(BackboneSpec("googlenet", 1024, imagenet,
                          _tv_pooled("googlenet", google, aux_logits=False, init_weights=True),
                          pin["googlenet"], head_prefixes=("fc.", "aux1.", "aux2.")))
    register(BackboneSpec("inception_v3", 2048, Preprocess(input_size=299),
                          _tv_pooled("inception_v3", google, aux_logits=False, init_weights=True),
                          pin["inception_v3"], head_prefixes=("fc.", "AuxLogits.")))


def _register_xception():
    # Keras' Xception of the seed paper; timm's port keeps its 0.5/0.5 scaling.
    # Resize is "squash" like the other named entries (the paper's policy).
    pre = Preprocess(input_size=299, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     interpolation="bicubic")
    register(BackboneSpec("xception", 2048, pre, _timm_build("legacy_xception", "tf_in1k"),
                          Pretrained("timm", "legacy_xception", "tf_in1k"), source="timm",
                          head_prefixes=("fc.",)))


_register_torchvision()
_register_xception()


def available_backbones() -> list[str]:
    return sorted(BACKBONES) + ["timm:<name>"]


# Networks passed to fb.extract in this session (models.custom): name -> (spec, weights id)
SESSION: dict[str, tuple[BackboneSpec, str]] = {}


def register_session(spec: BackboneSpec, *, weights: str) -> None:
    """Register a user's network for this session (``module:<ClassName>``; the latest
    module of a name replaces the one before)."""
    SESSION[spec.name] = (spec, weights)


def get_spec(name: str) -> BackboneSpec:
    """Registry entry for ``name``; ``timm:<model>`` builds one on the fly."""
    if name.startswith("timm:"):
        return timm_spec(name[len("timm:"):])
    if name.startswith("module:"):
        if name not in SESSION:
            raise BadInput(f"{name} is a network a session passed to fb.extract; its feature "
                           "files read as any other, but it cannot be rebuilt by name")
        return SESSION[name][0]
    try:
        return BACKBONES[name]
    except KeyError:
        raise BadInput(f"unknown backbone {name!r}; choose from "
                         f"{', '.join(available_backbones())}") from None


def check_names(names: str | list[str]) -> list[str]:
    """``"vgg19,resnet50"`` or ``"all"`` -> registry names, checked without importing timm."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise BadInput(f"no backbone given; choose from {', '.join(available_backbones())}")
    if "all" in names:
        return sorted(BACKBONES)
    for name in names:
        if not name.startswith(("timm:", "module:")):
            get_spec(name)
    return list(dict.fromkeys(names))


def resolve_names(names: str | list[str]) -> list[str]:
    """Like :func:`check_names`, ``timm:`` names checked against timm too."""
    names = check_names(names)
    for name in names:
        if name.startswith("timm:"):
            get_spec(name)
    return names


def weights_id(weights: str, *, option: str = "--weights") -> str:
    """Provenance of the weights: ``imagenet``, ``random``, or ``sha256:<hex>`` of the file."""
    if weights in ("imagenet", "random", "module"):  # module: a session network's own
        return weights
    path = Path(weights)
    if not path.is_file():
        raise MissingFile(f"weights file {weights} not found; use {option} "
                                "imagenet, random, or the path of a state_dict")
    return "sha256:" + file_sha256(path)


# -- feature selections: "A@W+B@W,C" ------------------------------------------------

Part = tuple[str, "str | None"]  # (backbone, weights filter or None)


def parse_weights_filter(text: str) -> str:
    """Which feature files ``--weights`` picks, as ``extract.py --weights`` named them:
    ``imagenet``, ``random``, ``all``, a sha256 prefix (``sha256:6701bb3d0ded`` or bare
    hex), or the weights file itself (or a fine-tuning run folder, for its trunk),
    which stands for its sha256."""
    text = text.strip()
    if text in ("imagenet", "random", "all"):
        return text
    path = Path(text)
    if path.is_dir() and (path / "trunk.pth").is_file():
        path = path / "trunk.pth"
    if path.is_file():
        return "sha256:" + file_sha256(path)
    digits = text.removeprefix("sha256:")
    if re.fullmatch(r"[0-9a-fA-F]{4,64}", digits):
        return "sha256:" + digits.lower()
    raise BadInput(f"weights {text!r}: use imagenet, random, a sha256 prefix "
                   "(sha256:6701bb3d0ded) or the weights file extract.py was given")


def parse_selection(text: str) -> list[tuple[Part, ...]]:
    """``"A@W+B,C"`` -> ``[(("A", "W"), ("B", None)), (("C", None),)]``; ``all`` -> ``[]``.

    Each comma-separated item is one feature source; ``+`` joins feature files
    into one (their vectors concatenated on the ids they share); ``@W`` picks
    a backbone's file by weights (else ``--weights`` does).
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BadInput(f"no backbone given; choose from {', '.join(available_backbones())}")
    if "all" in items:
        if len(items) > 1:
            raise BadInput(f"--backbone {text!r}: 'all' stands alone")
        return []
    selection = []
    for item in items:
        parts = []
        for part in item.split("+"):
            name, at, weights = part.strip().partition("@")
            check_names([name])
            parts.append((name, parse_weights_filter(weights) if at else None))
        if len(parts) != len(set(parts)):
            raise BadInput(f"--backbone {item!r} names the same features twice")
        selection.append(tuple(parts))
    return selection
