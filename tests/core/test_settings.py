"""Settings defaults that depend on the machine: decoding workers per device."""
import os

import pytest
import torch

from featbank.core.settings import default_workers
from featbank.extraction.config import ExtractConfig
from featbank.finetuning.config import FinetuneConfig
from featbank.models.inference import resolve_workers


@pytest.mark.parametrize("cores, cpu, cuda", [(1, 0, 1), (2, 0, 1), (3, 2, 2), (16, 8, 15),
                                            (64, 8, 32)])
def test_workers_leave_a_core_to_the_main_process_but_two_cores_decode_in_it(
        monkeypatch, cores, cpu, cuda):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_workers("cpu") == cpu and default_workers("cuda") == cuda


def test_workers_default_to_the_devices_and_an_explicit_value_stands():
    assert ExtractConfig(backbones="resnet18").workers is None
    assert FinetuneConfig(backbone="resnet18", task="type").workers is None
    assert resolve_workers(None, torch.device("cpu")) == default_workers("cpu")
    assert resolve_workers(None, torch.device("cuda")) == default_workers("cuda")
    assert resolve_workers(0, torch.device("cuda")) == 0
    with pytest.raises(ValueError, match="--workers must be at least 0, not -2"):
        FinetuneConfig(backbone="resnet18", task="type", workers=-2)
