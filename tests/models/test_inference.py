"""The fastest exact-enough forward: what --precision auto means on a CPU (bf16 only where
the CPU has it natively), the memory format (contiguous only for an explicit fp32 on a
CPU, which keeps earlier numbers), the first-batch check, and what a run announces."""
import numpy as np
import pytest
import torch

import featbank.models.inference as inference
from featbank.core.hardware import BF16_FLAGS, cpu_flags
from featbank.data.preprocess import Preprocess
from featbank.extraction.compute import default_batch_size
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_on_a_cpu_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(inference, "native_bf16", lambda: native)
    assert inference.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert inference.resolve_precision("fp32", CPU) == "fp32"
    assert inference.resolve_layout("auto", CPU) == "channels_last"
    assert inference.resolve_layout("fp32", CPU) == "contiguous"  # the numbers of before
    assert inference.resolve_layout("bf16", CPU) == "channels_last"


def test_native_bf16_is_read_from_the_cpu_s_flags():
    from featbank.core.hardware import native_bf16

    assert native_bf16() == any(flag in cpu_flags() for flag in BF16_FLAGS)


def test_fp32_contiguous_gives_the_sums_of_before_and_channels_last_the_same_vectors():
    trunk = load_trunk(get_spec("squeezenet1_1"), "random")
    spec = get_spec("squeezenet1_1")
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    before = inference.TrunkRunner(spec, trunk, CPU, None).submit(pixels)()
    x = inference.normalize(pixels, spec.preprocess)
    with torch.inference_mode():
        plain = trunk(x).numpy()  # the contiguous forward featbank always ran on a CPU
    assert np.array_equal(before, plain)
    last = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, None,
                                 layout="channels_last").submit(pixels)()
    np.testing.assert_allclose(last, plain, rtol=1e-4, atol=1e-5)


def test_bf16_past_the_tolerance_falls_back_to_fp32_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(inference, "AUTOCAST_TOLERANCE", 1e-9)  # bf16 never that close
    spec = get_spec("squeezenet1_1")
    runner = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, torch.bfloat16,
                                   layout="channels_last")
    pixels = torch.randint(0, 256, (inference.CHECK_ROWS + 2, 3, 64, 64), dtype=torch.uint8)
    rows = runner.submit(pixels)()
    assert runner.precision == "fp32" and "using fp32" in capsys.readouterr().out + \
        capsys.readouterr().err
    fp32 = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, None,
                                 layout="channels_last").submit(pixels)()
    assert np.array_equal(rows, fp32)  # every row of the batch, checked or not


def test_the_check_computes_only_its_sample_of_the_first_batch_again_in_fp32(monkeypatch):
    spec = get_spec("squeezenet1_1")
    runner = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, torch.bfloat16,
                                   layout="channels_last")
    passes, final = [], runner._final
    monkeypatch.setattr(runner, "_final", lambda x, **kw: passes.append(len(x)) or final(x, **kw))
    runner.submit(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8))()
    assert passes == [8, inference.CHECK_ROWS] and inference.CHECK_ROWS < 8
    assert runner.precision == "bf16"


def test_cpu_batches_fit_the_caches_and_a_gpu_keeps_its_32():
    assert default_batch_size(CPU, [Preprocess(input_size=224)]) == 8
    assert default_batch_size(CPU, [Preprocess(input_size=224), Preprocess(input_size=299)]) == 4
    assert default_batch_size(torch.device("cuda"), [Preprocess(input_size=224)]) == 32


def test_the_first_batch_check_gives_the_rows_an_unchecked_runner_makes():
    spec = get_spec("squeezenet1_1")
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    checked = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, torch.bfloat16,
                                    layout="channels_last")
    first = checked.submit(pixels)()
    assert checked.precision == "bf16" and checked.check_error is not None
    plain = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, torch.bfloat16,
                                  check=False, layout="channels_last").submit(pixels)()
    assert np.array_equal(first, plain)
    assert np.array_equal(checked.submit(pixels)(), plain)


def test_a_runner_folds_its_batch_norms_only_when_asked_and_nothing_is_tapped():
    from featbank.models.layers import pick

    spec = get_spec("resnet18")
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    plain = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, None,
                                  layout="channels_last")
    folded = inference.TrunkRunner(spec, load_trunk(spec, "random"), CPU, None,
                                   layout="channels_last", fold=True)
    assert folded.folded and not plain.folded
    np.testing.assert_allclose(folded.submit(pixels)(), plain.submit(pixels)(), rtol=1e-4,
                               atol=1e-5)
    trunk = load_trunk(spec, "random")
    tapped = inference.TrunkRunner(spec, trunk, CPU, None, fold=True,
                                   layers=pick(trunk, "all", spec.name))
    assert not tapped.folded
