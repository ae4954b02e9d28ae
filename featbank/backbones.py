"""Backbone registry: name -> frozen trunk that maps a preprocessed batch to GAP vectors.

Every entry is a :class:`BackboneSpec` carrying its preprocessing, so no script
ever hard-codes an input size or normalisation. ``load_trunk(spec, weights)``
returns a module in eval mode with gradients off: batch-norm statistics are
fixed, which is what "frozen" must mean (Sabatelli et al.'s near-zero
off-the-shelf ResNet50 / Inception-V3 artist scores are the symptom of BN left
in training mode).

Weights are ``"imagenet"`` (the real torchvision / timm loaders and their
caches), ``"random"`` (seeded, reproducible) or a path to a state_dict of the
trunk (loaded with ``weights_only=True``, strict on the trunk's keys).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the backbone's input tensor.

    ``resize="squash"`` resizes the whole image to ``input_size`` square
    (Sabatelli et al.'s Keras ``target_size``: nothing of the artwork is
    cropped away); ``resize="center_crop"`` resizes the shorter side to
    ``input_size / crop_pct`` and crops the centre (the timm convention).
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def geometry(self) -> tuple:
        """What decides the uint8 pixels; backbones sharing it share one decoded view."""
        return (self.input_size, self.resize, self.crop_pct, self.interpolation)

    def attrs(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation}


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``build(pretrained)`` returns the trunk (not yet frozen)."""

    name: str
    feature_dim: int
    preprocess: Preprocess
    build: Callable[[bool], nn.Module] = field(repr=False)
    # Keys of a full-model state_dict that the trunk drops (its classifier);
    # a checkpoint may carry them, nothing else may be extra.
    head_prefixes: tuple[str, ...] = ()
    source: str = "torchvision"
    weights_hint: Callable[[], str] = field(repr=False, default=lambda: "")


class GapTrunk(nn.Module):
    """``features`` followed by global average pooling (VGG, AlexNet, SqueezeNet).

    The attribute is named ``features`` so the state_dict keys are torchvision's.
    """

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def _torchvision_model(name: str, pretrained: bool, **kwargs) -> nn.Module:
    from torchvision.models import get_model

    if pretrained:
        return get_model(name, weights="DEFAULT")
    return get_model(name, weights=None, **kwargs)


def _tv_features(name: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        return GapTrunk(_torchvision_model(name, pretrained).features)
    return build


def _tv_pooled(name: str, **random_kwargs) -> Callable[[bool], nn.Module]:
    """Models whose forward already ends in GAP -> fc; fc becomes the identity."""
    def build(pretrained: bool) -> nn.Module:
        model = _torchvision_model(name, pretrained, **random_kwargs)
        model.fc = nn.Identity()
        return model
    return build


def _tv_hint(name: str) -> Callable[[], str]:
    def hint() -> str:
        from torchvision.models import get_model_weights

        url = get_model_weights(name).DEFAULT.url
        target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        return f"place {url} at {target}"
    return hint


def _timm_build(model_name: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import timm

        return timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    return build


def _timm_hint(model_name: str) -> Callable[[], str]:
    def hint() -> str:
        import timm

        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is not None and cfg.hf_hub_id:
            return (f"put the Hugging Face repo {cfg.hf_hub_id} in the HF cache "
                    f"(HF_HOME, default ~/.cache/huggingface)")
        if cfg is not None and cfg.url:
            target = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
            return f"place {cfg.url} at {target}"
        return f"timm has no pretrained weights for {model_name}"
    return hint


def _timm_meta(model_name: str) -> tuple[int, dict]:
    """num_features and data config without allocating weights (meta device)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    return model.num_features, timm.data.resolve_model_data_config(model)


def timm_spec(model_name: str, *, resize: str = "center_crop") -> BackboneSpec:
    """Spec for any timm model, preprocessing from its pretrained config."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models()")
    dim, cfg = _timm_meta(model_name)
    pre = Preprocess(input_size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]),
                     std=tuple(cfg["std"]), resize=resize,
                     crop_pct=float(cfg.get("crop_pct", 1.0)) if resize == "center_crop" else 1.0,
                     interpolation=cfg.get("interpolation", "bilinear"))
    return BackboneSpec(name=f"timm:{model_name}", feature_dim=dim, preprocess=pre,
                        build=_timm_build(model_name), source="timm",
                        head_prefixes=(), weights_hint=_timm_hint(model_name))


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec
    return spec


def _register_torchvision():
    imagenet = Preprocess(input_size=224)
    features = {"vgg19": 512, "alexnet": 256, "squeezenet1_1": 512}
    for name, dim in features.items():
        register(BackboneSpec(name, dim, imagenet, _tv_features(name),
                              head_prefixes=("classifier.",), weights_hint=_tv_hint(name)))
    register(BackboneSpec("resnet50", 2048, imagenet, _tv_pooled("resnet50"),
                          head_prefixes=("fc.",), weights_hint=_tv_hint("resnet50")))
    register(BackboneSpec("resnet18", 512, imagenet, _tv_pooled("resnet18"),
                          head_prefixes=("fc.",), weights_hint=_tv_hint("resnet18")))
    # aux classifiers off; with ImageNet weights torchvision drops them itself.
    register(BackboneSpec("googlenet", 1024, imagenet,
                          _tv_pooled("googlenet", aux_logits=False, init_weights=True),
                          head_prefixes=("fc.", "aux1.", "aux2."),
                          weights_hint=_tv_hint("googlenet")))
    register(BackboneSpec("inception_v3", 2048, Preprocess(input_size=299),
                          _tv_pooled("inception_v3", aux_logits=False, init_weights=True),
                          head_prefixes=("fc.", "AuxLogits."),
                          weights_hint=_tv_hint("inception_v3")))


def _register_xception():
    # Keras' Xception of the seed paper; timm's port keeps its 0.5/0.5 scaling.
    # Resize is "squash" like the other named entries (the paper's policy).
    pre = Preprocess(input_size=299, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     interpolation="bicubic")
    register(BackboneSpec("xception", 2048, pre, _timm_build("legacy_xception"),
                          source="timm", weights_hint=_timm_hint("legacy_xception")))


_register_torchvision()
_register_xception()


def available_backbones() -> list[str]:
    return sorted(BACKBONES) + ["timm:<name>"]


def get_spec(name: str) -> BackboneSpec:
    """Registry entry for ``name``; ``timm:<model>`` builds one on the fly."""
    if name.startswith("timm:"):
        return timm_spec(name[len("timm:"):])
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from "
                         f"{', '.join(available_backbones())}") from None


def resolve_names(names: str | list[str]) -> list[str]:
    """``"vgg19,resnet50"`` or ``"all"`` -> list of registry names (validated)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no backbone given; choose from {', '.join(available_backbones())}")
    if "all" in names:
        return sorted(BACKBONES)
    for name in names:
        get_spec(name)
    return list(dict.fromkeys(names))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_id(weights: str) -> str:
    """Provenance of the weights: ``imagenet``, ``random``, or ``sha256:<hex>`` of the file."""
    if weights in ("imagenet", "random"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {weights} not found; use --weights "
                                "imagenet, random, or the path of a state_dict")
    return "sha256:" + file_sha256(path)


def load_trunk(spec: BackboneSpec, weights: str = "imagenet") -> nn.Module:
    """The frozen trunk: eval mode, no gradients. Output: (B, spec.feature_dim)."""
    if weights == "imagenet":
        trunk = build_pretrained(spec)
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            trunk = spec.build(False)
    else:
        trunk = spec.build(False)
        load_state_dict_file(trunk, weights, head_prefixes=spec.head_prefixes)
    return freeze(trunk)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def build_pretrained(spec: BackboneSpec) -> nn.Module:
    try:
        return spec.build(True)
    except (OSError, ConnectionError) as err:  # URLError, HF LocalEntryNotFoundError
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} are not cached and cannot be downloaded "
            f"({type(err).__name__}); {spec.weights_hint()}, or use --weights PATH "
            "(a state_dict) or --weights random") from None


def load_state_dict_file(module: nn.Module, path: str | os.PathLike, *,
                         head_prefixes: tuple[str, ...] = ()) -> None:
    """Load a state_dict strictly; only classifier keys (``head_prefixes``) may be extra."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path} not found") from None
    except Exception as err:
        raise ValueError(f"{path} is not a PyTorch state_dict ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a featbank checkpoint
        state = {k.removeprefix("trunk."): v for k, v in state["model"].items()
                 if k.startswith("trunk.")}
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    extra = sorted(k for k in set(state) - expected if not k.startswith(head_prefixes))
    if missing or extra:
        raise ValueError(f"{path} does not fit this backbone: "
                         f"{len(missing)} missing keys {missing[:3]}, "
                         f"{len(extra)} unexpected keys {extra[:3]}")
    try:
        module.load_state_dict({k: state[k] for k in expected}, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ValueError(f"{path} does not fit this backbone: {first}") from None
