"""Batch norms folded into their convolutions: the same vectors with no batch norm left, the
trunk itself untouched, a trunk fx cannot trace folded by its modules where that keeps its
vectors, no folding where nothing would fold, and only where a run may change its sums
(a CPU, not --precision fp32)."""
import copy

import torch
from helpers import SHARED
from torch import nn

from featbank.models.fold import can_fold, fold_batchnorm
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk

XCEPTION = SHARED / "weights" / "xception-imagenet.pth"


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _conv_bn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for bn in (net[1], net[4]):  # statistics far from the identity, as a trained net has
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.1, 4)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return net.eval()


def test_folding_keeps_the_vectors_and_leaves_no_batch_norm_and_the_trunk_as_it_was():
    net = _conv_bn()
    before = copy.deepcopy(net.state_dict())
    folded = fold_batchnorm(net)
    assert folded is not None and _batch_norms(folded) == 0 and _batch_norms(net) == 2
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


class _Branching(nn.Module):
    """A forward pass that depends on the data: fx cannot trace it. ``shared``: the
    convolution's output is read by its batch norm and by the sum after it too."""

    def __init__(self, shared: bool = False):
        super().__init__()
        self.shared = shared
        self.conv, self.bn = _conv_bn()[0], _conv_bn()[1]

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y if self.shared else self.bn(y)
        return z.mean((2, 3)) if z.sum() > 0 else -z.mean((2, 3))


class _TimmStyle(nn.Module):
    """timm's BatchNormAct2d after a convolution, behind data-dependent control flow."""

    def __init__(self):
        super().__init__()
        from timm.layers import BatchNormAct2d

        self.conv, bn = _conv_bn()[0], _conv_bn()[1]
        self.bn = BatchNormAct2d(8, act_layer=nn.ReLU6)
        self.bn.load_state_dict(bn.state_dict())

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y.mean((2, 3)) if x.shape[-1] % 2 == 0 else y.amax((2, 3))


def test_a_trunk_fx_cannot_trace_folds_by_its_modules_to_the_same_vectors():
    x = torch.randn(2, 3, 16, 16)
    for net in (_Branching().eval(), _TimmStyle().eval()):
        folded = fold_batchnorm(net, size=16)
        assert folded is not None and _batch_norms(folded) == 0 and _batch_norms(net) == 1
        with torch.inference_mode():
            torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    assert isinstance(folded.bn[1], nn.ReLU6)  # the activation stays


def test_no_folding_where_a_pair_would_change_the_vectors_nothing_folds_or_it_trains():
    assert fold_batchnorm(_Branching(shared=True).eval(), size=16) is None
    assert fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()) is None
    assert fold_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)).eval()) is None
    assert fold_batchnorm(_conv_bn().train()) is None


def test_only_a_cpu_run_that_may_change_its_sums_folds():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert can_fold(cpu, "auto") and can_fold(cpu, "bf16")
    assert not can_fold(cpu, "fp32")  # the sums of files written before folding
    assert not can_fold(gpu, "auto")


def test_xception_s_imagenet_trunk_folds_to_the_same_features():
    spec = get_spec("xception")
    trunk = load_trunk(spec, str(XCEPTION))
    folded = fold_batchnorm(trunk)
    assert folded is not None and _batch_norms(trunk) > 30 and _batch_norms(folded) == 0
    torch.manual_seed(0)
    x = torch.randn(2, 3, 299, 299)
    with torch.inference_mode():
        plain, fast = trunk(x), folded(x)
    error = ((fast - plain).norm(dim=1) / plain.norm(dim=1)).max()
    assert error < 1e-4, error


def test_efficientnet_lite0_s_imagenet_trunk_folds_by_its_modules_to_the_same_features():
    spec = get_spec("timm:tf_efficientnet_lite0")
    trunk = load_trunk(spec, str(SHARED / "weights" / "tf_efficientnet_lite0-imagenet.pth"))
    folded = fold_batchnorm(trunk, spec.preprocess.input_size)
    assert folded is not None and _batch_norms(trunk) > 30 and _batch_norms(folded) == 0
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain, fast = trunk(x), folded(x)
    error = ((fast - plain).norm(dim=1) / plain.norm(dim=1)).max()
    assert error < 1e-4, error
