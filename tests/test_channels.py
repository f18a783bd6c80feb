"""Channel selection by |γ|, compact-network surgery and its cost measures (utils/channels.py)."""
import numpy as np
import pytest
import torch

from data import FOLDER, TEST_FILES, read_batches, to_pixels
from models import count_params, get_model
from conftest import masked_model
from utils.channels import (block_gammas, compact_model, count_flops, forward_seconds,
                            prunable_bn_names, select_channels, threshold_masks)
from utils.train import seeded

RESNET20_BNS = [f"layer{s}.{i}.bn1" for s in (1, 2, 3) for i in range(3)]


def as_lists(masks):
    return [m.tolist() for m in masks]


def randomise_bn(model, seed=0):
    """Random γ (both signs), β and running statistics in every BatchNorm, so that a surgery
    that copies the wrong channels, or forgets the running stats, changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(0.5 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def images(data_dir):
    x, _ = read_batches(data_dir / FOLDER, TEST_FILES)
    return to_pixels(x[:8])


def test_prunable_bn_names_are_block_bn1_in_network_order():
    names = [n for n, _ in get_model("resnet20").named_modules()]
    assert prunable_bn_names(names) == RESNET20_BNS
    assert prunable_bn_names(reversed(names)) == RESNET20_BNS  # order comes from the names
    assert prunable_bn_names(["bn1", "layer1.0.bn2", "layer2.0.shortcut.1"]) == []


def test_threshold_is_exact_with_ties_broken_by_position():
    # |γ| = 0.5 at flat positions 1, 2, 4, 5 (a negative one among them), 7
    gammas = [torch.tensor([1.0, 0.5, 0.5, 2.0]), torch.tensor([0.5, -0.5, 3.0]), torch.tensor([0.5, 1.0])]
    # ratio 0.3 of 9: round(2.7) = 3 go, the earliest three of the tied 0.5s
    assert as_lists(threshold_masks(gammas, 0.3)) == [[True, False, False, True], [False, True, True], [True, True]]
    # ratio 0.5: round(4.5) = 4 (round half to even), so the 0.5 at position 7 survives
    assert as_lists(threshold_masks(gammas, 0.5)) == [[True, False, False, True], [False, False, True], [True, True]]
    sel = select_channels(gammas, 0.5)
    assert as_lists(sel.keep) == as_lists(threshold_masks(gammas, 0.5))
    assert (sel.widths, sel.kept, sel.total, sel.forced) == ([2, 1, 2], 5, 9, 0)
    assert as_lists(threshold_masks(gammas, 0.0)) == [[True] * 4, [True] * 3, [True] * 2]


def test_every_block_keeps_one_channel_and_the_count_stays_exact():
    gammas = [torch.tensor([0.1, 0.2]), torch.tensor([5.0, 4.0, 3.0, 0.3])]
    # the plain threshold (3 of 6 go) empties block 0 ...
    assert as_lists(threshold_masks(gammas, 0.5)) == [[False, False], [True, True, True, False]]
    # ... the compact rule keeps its best channel and drops the weakest kept one elsewhere (3.0)
    sel = select_channels(gammas, 0.5)
    assert as_lists(sel.keep) == [[False, True], [True, True, False, False]]
    assert (sel.widths, sel.kept, sel.forced) == ([1, 2], 3, 1)
    # tied block: the later position is the one ranked highest, so it is kept
    assert as_lists(select_channels([torch.tensor([0.1, 0.1]), torch.tensor([1.0, 2.0])], 0.5).keep) == \
        [[False, True], [False, True]]
    # infeasible (1 of 6 would survive, 3 blocks): one channel per block, the best one
    sel = select_channels([torch.tensor([0.1, 0.3]), torch.tensor([2.0, 1.0]), torch.tensor([0.2, 0.25])], 0.9)
    assert as_lists(sel.keep) == [[False, True], [True, False], [False, True]]
    assert (sel.kept, sel.forced) == (3, 2)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_kept_channels_equal_an_independent_global_threshold(ratio):
    model = randomise_bn(seeded(lambda: get_model("resnet20"), 1), seed=int(ratio * 10))
    gammas = block_gammas(model)
    values = np.concatenate([g.numpy() for g in gammas])
    n_remove = int(round(ratio * len(values)))
    cut = np.sort(np.abs(values))[n_remove - 1]  # the largest |γ| removed; values are distinct
    expected = [np.abs(g.numpy()) > cut for g in gammas]
    sel = select_channels(gammas, ratio)
    assert sel.forced == 0
    assert sel.kept == len(values) - n_remove == sum(int(e.sum()) for e in expected)
    assert as_lists(sel.keep) == [e.tolist() for e in expected]
    assert as_lists(threshold_masks(gammas, ratio)) == [e.tolist() for e in expected]


@pytest.mark.parametrize("arch,shortcut", [("resnet20", "B"), ("resnet32", "B"), ("resnet56", "B"), ("resnet20", "A")])
def test_compact_network_equals_masked_full_network(arch, shortcut, images):
    model = randomise_bn(seeded(lambda: get_model(arch, shortcut=shortcut), 3))
    sel = select_channels(block_gammas(model), 0.5)
    compact = compact_model(model, sel.keep)
    assert compact.widths == sel.widths and sum(compact.widths) < sum(model.widths)
    assert count_params(compact) < count_params(model)
    with torch.no_grad():
        full, masked, small = model(images), masked_model(model, sel.keep)(images), compact(images)
    scale = masked.abs().max().item()
    assert (full - masked).abs().max().item() > 1e-2 * scale  # pruning changes the net: a real test
    torch.testing.assert_close(small, masked, rtol=1e-4, atol=1e-5 * scale)
    # the surviving BatchNorm entries are the kept channels of the full net, in order
    for b_full, b_small, m in zip(model.blocks(), compact.blocks(), sel.keep):
        assert torch.equal(b_small.bn1.running_var, b_full.bn1.running_var[m])
        assert torch.equal(b_small.conv2.weight, b_full.conv2.weight[:, m])


def hand_flops(widths, n):
    """2 x multiply-adds of every conv and the linear layer of a shortcut-B CIFAR ResNet."""
    flops, size, c_in = 2 * 16 * 3 * 9 * 32 * 32, 32, 16
    blocks = iter(widths)
    for stage, c_out in enumerate((16, 32, 64)):
        for i in range(n):
            w = next(blocks)
            stride = 2 if stage > 0 and i == 0 else 1
            size //= stride
            flops += 2 * w * c_in * 9 * size * size + 2 * c_out * w * 9 * size * size
            if stride != 1 or c_in != c_out:
                flops += 2 * c_out * c_in * size * size
            c_in = c_out
    return flops + 2 * 64 * 10


def test_flop_counter_matches_the_conv_arithmetic():
    widths = [3, 16, 7, 20, 1, 32, 64, 9, 40]
    assert count_flops(get_model("resnet20")) == hand_flops([16] * 3 + [32] * 3 + [64] * 3, 3) == 81_626_368
    assert count_flops(get_model("resnet20", widths=widths)) == hand_flops(widths, 3)


def test_forward_seconds_times_every_model():
    nets = [get_model("resnet20").eval(), get_model("resnet20", widths=[1] * 9).eval()]
    times = forward_seconds(nets, torch.rand(2, 3, 32, 32), repeats=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times)
