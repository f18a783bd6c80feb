"""Evaluation in its fastest form: BatchNorm folded into the convolutions computes what the
unfolded network computes in eval mode, for every architecture, masked or channel-pruned."""
import copy

import pytest
import torch
import torch.nn.functional as F

from data import CifarSplit
from models import get_model
from utils.inference import conv_bn_pairs, folded
from utils.train import evaluate


def trained_stats(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("arch, kwargs, pairs", [
    ("resnet20", {}, 19 + 2),  # every conv has its BatchNorm; shortcut B adds 2 conv+BN pairs
    ("resnet20", {"shortcut": "A"}, 19),
    ("resnet20", {"widths": [3, 16, 5, 8, 32, 2, 30, 64, 7]}, 21),  # a channel-pruned compact net
    ("vgg16", {}, 13),
])
def test_folded_equals_unfolded(arch, kwargs, pairs):
    torch.manual_seed(0)
    model = trained_stats(get_model(arch, **kwargs)).to(memory_format=torch.channels_last)
    assert len(conv_bn_pairs(model)) == pairs
    x = torch.rand(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x)
        net = folded(model)
        got = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert model.training  # the live model is left as it was


def test_folded_follows_the_live_weights_and_keeps_zeros():
    torch.manual_seed(1)
    model = trained_stats(get_model("resnet20"))
    x = torch.rand(8, 3, 32, 32)
    first = folded(model)
    with torch.no_grad():
        model.conv1.weight[:4] = 0  # pruned after the first evaluation
        model.bn1.running_var.mul_(2)
        again = folded(model)
        assert again is first  # built once, refreshed in place
        torch.testing.assert_close(again(x), copy.deepcopy(model).eval()(x), rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(again.conv1.weight[:4]) == 0  # a folded zero stays exactly zero


def test_evaluate_matches_the_unfolded_network():
    torch.manual_seed(2)
    model = trained_stats(get_model("resnet20"), seed=2)
    g = torch.Generator().manual_seed(0)
    split = CifarSplit(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.randint(0, 10, (300,), generator=g))
    loss, acc = evaluate(model, split, batch_size=128, precision="fp32")
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        out = torch.cat([ref(x) for x, _ in split.batches(128)])
    assert loss == pytest.approx(F.cross_entropy(out, split.labels).item(), rel=1e-5)
    assert acc == pytest.approx(100.0 * (out.argmax(1) == split.labels).float().mean().item())
