"""How every stage's settings work: dataclasses checked when built, identity vs runtime fields.

Configuration flows one way: command line -> a stage's config dataclass
(``featbank.<stage>.config``) -> the stage, which saves it beside what it made.
Every value is checked in ``__post_init__``, whatever there is left to do, so
a complete cache never hides a bad option. A field declared with
``runtime()`` does not change results (where to write, how many processes,
progress bars); every other field is part of a result's identity
(:func:`identity`), so a new option is part of the identity unless someone
decides otherwise. The checks here are shared by the configs of every stage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import field

from featbank.core.errors import BadInput
from featbank.core.hardware import cores, nvidia_driver


def defaults(config_class) -> dict:
    """Field name -> default value of a config class (for help texts)."""
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def runtime(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING):
    """A field that does not change results, left out of :func:`identity`."""
    return field(default=default, default_factory=default_factory, metadata={"identity": False})


def identity(config) -> dict:
    """The fields that decide a result: nested dataclasses as dicts, or as their
    ``identity()`` when they define one (a split: its tag)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("identity", True):
            value = getattr(config, f.name)
            if callable(getattr(value, "identity", None)):
                value = value.identity()
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
    return out


def digest(value, length: int = 10) -> str:
    """A short sha256 of ``value`` as canonical JSON: names run folders, head files, outputs."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def default_workers(device_type: str = "cpu") -> int:
    """Decoding processes when ``--workers`` is not given: one fewer than the cores
    this process may use (the main process feeds the model), at most 8 where the
    model runs on the CPU, which needs the cores too, and at most 32 with a GPU,
    where decoding sets the pace (one worker decodes 350-1,100 img/s; docs/gpu.md).
    A CPU model on one or two cores decodes in the main process (0 workers): there
    a worker takes a core from the trunk's threads mid-pass, and extraction ran
    10-15 % slower with one than with none for ResNet50 and SqueezeNet, no faster
    for Xception (docs/extract.md, "Threads")."""
    if device_type == "cpu" and cores() <= 2:
        return 0
    return max(1, min(8 if device_type == "cpu" else 32, cores() - 1))


def check_workers(value: int | None) -> None:
    if value is not None:  # None: default_workers(device), once the device is known
        at_least("--workers", value, 0)


def check_device_name(device: str) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device on a machine with no NVIDIA driver is refused
    here, before torch is imported (torch itself checks when the stage starts)."""
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise BadInput(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not nvidia_driver():
        raise BadInput(f"--device {device} asked for, but this machine has no NVIDIA driver "
                       "(no /proc/driver/nvidia); use --device cpu")
    return device



def at_least(option: str, value, low) -> None:
    if value is None or value < low:
        raise BadInput(f"{option} must be at least {low}, not {value}")


def one_of(option: str, value, choices) -> None:
    if value not in choices:
        raise BadInput(f"unknown {option} {value!r}; use {', '.join(map(str, choices))}")


def fraction(option: str, value: float) -> None:
    if not 0 < value <= 1:
        raise BadInput(f"{option} must be in (0, 1], not {value}")


def seeded_repeats(config):
    """``config.repeats`` copies of a config, each with one repeat, splits seeded
    ``seed``, ``seed + 1``, ..."""
    seed = config.split.seed
    return [dataclasses.replace(config, repeats=1,
                                split=dataclasses.replace(config.split, seed=seed + r))
            for r in range(config.repeats)]
