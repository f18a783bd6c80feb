"""utils/three_regime.py on synthetic inputs: mc and barrier (self-pair, hand-made curves), linear
CKA (against the n x n kernel formula, and its invariances), BatchNorm re-estimation against an
independent average, the interpolation path, per-conv masks, the batch-size schedule, regimes."""
import math

import numpy as np
import pytest
import torch

from data import CifarSplit
from models import get_model
from utils.errors import UserError
from utils.three_regime import (assign_regimes, batch_schedule, batchnorms, check_grid, classify,
                                conv_density_mask, conv_weights, csv_float, density_name, interpolate,
                                linear_cka, linear_path, loss_barrier, mode_connectivity, path_alphas,
                                reestimate_bn, softmax_outputs, temperature_name)


def random_split(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return CifarSplit(images, labels)


def small_net(seed):
    torch.manual_seed(seed)
    return get_model("resnet20")


# --------------------------------------------------------------------------------------------
# mc and barrier

def test_mc_and_barrier_of_a_self_pair_are_zero():
    alphas = path_alphas(11)
    assert mode_connectivity([0.3] * 11) == 0.0
    assert loss_barrier(alphas, [1.7] * 11) == 0.0


def test_mc_and_barrier_of_hand_made_curves():
    # a bump of error in the middle: mid = 0.1, E(0.5) = 0.3 -> mc = -0.2 (a barrier)
    assert mode_connectivity([0.1, 0.3, 0.1]) == pytest.approx(-0.2)
    # a dip: mid = 0.2, deepest point 0.05 -> mc = +0.15
    assert mode_connectivity([0.2, 0.1, 0.05, 0.1, 0.2]) == pytest.approx(0.15)
    # endpoints count: mid 0.2, |0.2 - E| is 0.2 at alpha 0 and alpha 1, 0.15 inside; the first
    # maximum (alpha 0) is taken: mc = 0.2 - 0.0
    assert mode_connectivity([0.0, 0.05, 0.4]) == pytest.approx(0.2)
    # loss 3 at alpha 0.5 against the chord 1.5 -> 1.5; a path below its chord -> 0
    assert loss_barrier([0, 0.5, 1], [1, 3, 2]) == pytest.approx(1.5)
    assert loss_barrier([0, 0.5, 1], [1, 0.5, 2]) == 0.0
    # chord 2 - alpha: gaps 0.75, 0.9, 0.95 inside; the largest is at alpha 0.75
    assert loss_barrier(path_alphas(5), [2, 2.5, 2.4, 2.2, 1]) == pytest.approx(2.2 - 1.25)


def test_a_real_self_pair_path_is_flat():
    train = random_split(150)
    net = small_net(0)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    rows = linear_path(small_net(1), params, params, train, points=3)
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert len({r["train_loss"] for r in rows}) == 1 and len({r["train_error"] for r in rows}) == 1
    assert mode_connectivity([r["train_error"] for r in rows]) == 0.0
    assert loss_barrier([r["alpha"] for r in rows], [r["train_loss"] for r in rows]) == 0.0


# --------------------------------------------------------------------------------------------
# The path: interpolation and BatchNorm re-estimation

def test_interpolation_endpoints_and_pruned_zeros():
    a, b = small_net(0), small_net(1)
    mask = conv_density_mask(conv_weights(a), 0.3)
    with torch.no_grad():
        for net in (a, b):
            for n, p in net.named_parameters():
                if n in mask:
                    p.mul_(mask[n])
            for m in batchnorms(net):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    pa = {n: p.detach().clone() for n, p in a.named_parameters()}
    pb = {n: p.detach().clone() for n, p in b.named_parameters()}
    scratch = small_net(2)
    interpolate(scratch, pa, pb, 0.0)
    assert all(torch.equal(p, pa[n]) for n, p in scratch.named_parameters())
    interpolate(scratch, pa, pb, 1.0)
    assert all(torch.equal(p, pb[n]) for n, p in scratch.named_parameters())
    interpolate(scratch, pa, pb, 0.3)
    got = dict(scratch.named_parameters())
    for n in mask:  # pruned in both ends -> exactly zero on the whole path
        assert torch.all(got[n][mask[n] == 0] == 0)
        assert (got[n] == 0).sum() >= (mask[n] == 0).sum()
    # every parameter, BatchNorm gamma/beta and the Linear layer included, is on the segment
    for n in ("bn1.weight", "layer2.0.bn1.bias", "linear.weight", "linear.bias"):
        torch.testing.assert_close(got[n], 0.7 * pa[n] + 0.3 * pb[n])


@pytest.mark.parametrize("max_batches", [0, 2])
def test_bn_reestimation_is_the_exact_average_of_batch_statistics(max_batches):
    train = random_split(300)  # batches of 128, 128, 44
    train.images[256:] //= 4  # a darker last batch: weighting per image instead of per batch would show
    net = small_net(0)
    with torch.no_grad():
        for m in batchnorms(net):
            m.running_mean.fill_(5.0)  # stale statistics that must be forgotten
            m.running_var.fill_(7.0)
    seen = {}

    def hook(module, inputs):
        x = inputs[0].detach().double()
        seen.setdefault(module, []).append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))
    handles = [m.register_forward_pre_hook(hook) for m in batchnorms(net)]
    reestimate_bn(net, train, max_batches)
    for h in handles:
        h.remove()
    expected_batches = 2 if max_batches else 3
    for m in batchnorms(net):
        stats = seen[m]
        assert len(stats) == expected_batches
        mean = torch.stack([s[0] for s in stats]).mean(0)  # each batch weighted equally
        var = torch.stack([s[1] for s in stats]).mean(0)
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-4, atol=1e-6)  # fp32 variance
        assert m.momentum == 0.1  # the module's own setting is restored
        assert int(m.num_batches_tracked) == expected_batches
    assert net.training  # mode restored


# --------------------------------------------------------------------------------------------
# Linear CKA

def kernel_cka(x, y):
    """Independent formula: HSIC(K, L) = tr(K H L H) / (n - 1)^2 with n x n linear kernels."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 10, generator=g, dtype=torch.float64)
    y = torch.randn(60, 10, generator=g, dtype=torch.float64) + 0.5 * x
    z = torch.softmax(torch.randn(60, 10, generator=g, dtype=torch.float64), 1)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(kernel_cka(x, y), abs=1e-10)
    assert linear_cka(y, z) == pytest.approx(kernel_cka(y, z), abs=1e-10)
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-12)  # orthogonal map
    assert linear_cka(3.7 * x, y) == pytest.approx(linear_cka(x, y), abs=1e-12)  # isotropic scaling
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-15)  # symmetric
    assert 0.2 < linear_cka(x, y) < 1
    for _ in range(5):
        a = torch.randn(30, 4, generator=g, dtype=torch.float64)
        b = torch.randn(30, 6, generator=g, dtype=torch.float64)
        assert 0 <= linear_cka(a, b) <= 1
    assert math.isnan(linear_cka(torch.ones(5, 3), x[:5]))  # constant outputs: undefined


def test_softmax_outputs_use_eval_mode_and_the_first_images():
    train = random_split(70)
    net = small_net(0)
    net.train()
    out = softmax_outputs(net, train, 50, batch_size=32)
    assert out.dtype == torch.float64 and out.shape == (50, 10)
    torch.testing.assert_close(out.sum(1), torch.ones(50, dtype=torch.float64))
    net.eval()
    with torch.no_grad():
        expected = torch.softmax(net(next(train.batches(70))[0][:50]).double(), 1)
    torch.testing.assert_close(out, expected)
    assert not net.training


# --------------------------------------------------------------------------------------------
# Masks, names, the batch-size schedule, the grid checks

@pytest.mark.parametrize("density", [0.05, 0.1, 0.5, 1.0])
def test_conv_masks_are_exact_per_layer_and_leave_linear_dense(density):
    net = small_net(0)
    weights = conv_weights(net)
    assert "linear.weight" not in weights and len(weights) == 21  # 19 3x3 convs + two 1x1 shortcuts
    mask = conv_density_mask(weights, density)
    assert set(mask) == set(weights)
    for n, w in weights.items():
        zeros = int((mask[n] == 0).sum())
        assert zeros == int(round((1 - density) * w.numel()))
        if 0 < zeros < w.numel():  # the smallest magnitudes go first
            assert w[mask[n] == 0].abs().max() <= w[mask[n] == 1].abs().min()


def test_names_and_batch_schedule():
    assert temperature_name("epochs", 10) == "epoch_010" and temperature_name("batch-size", 32) == "batch_032"
    assert density_name(0.05) == "density_5" and density_name(0.14) == "density_14"
    assert density_name(1.0) == "density_100"
    assert batch_schedule(160, 32) == (40, (20, 30))
    assert batch_schedule(160, 128) == (160, (80, 120))  # B = 128 is the dense run's own recipe
    assert batch_schedule(160, 512) == (640, (320, 480))
    assert batch_schedule(3, 64) == (2, (1, 2))  # 1.5 rounds half up
    with pytest.raises(UserError, match="0 epochs"):
        batch_schedule(1, 16)


def test_grid_checks():
    check_grid([10], [0.05, 1.0], 2, 3)
    for bad in ([0.0], [1.5], [-0.1]):
        with pytest.raises(UserError, match="--densities"):
            check_grid([10], bad, 2, 11)
    with pytest.raises(UserError, match="--copies"):
        check_grid([10], [0.5], 1, 11)
    with pytest.raises(UserError, match="--lmc-points"):
        check_grid([10], [0.5], 2, 2)
    with pytest.raises(UserError, match="--temperatures"):
        check_grid([0], [0.5], 2, 11)


# --------------------------------------------------------------------------------------------
# Regimes

def test_regimes_from_mc_and_cka():
    rows = [{"mc": -0.2, "cka": 0.99}, {"mc": 0.0, "cka": 0.5}, {"mc": 0.05, "cka": 0.8},
            {"mc": -0.05, "cka": 0.7}, {"mc": -0.1, "cka": 0.6}]
    thresholds = assign_regimes(rows, 0.1)
    # mc = -0.1 is not below -0.1: connected; the non-I ckas 0.5 0.8 0.7 0.6 have median 0.65
    assert thresholds["mc_threshold"] == 0.1 and thresholds["cka_threshold"] == pytest.approx(0.65)
    assert [r["regime"] for r in rows] == ["I", "II-A", "II-B", "II-B", "II-A"]
    thresholds = assign_regimes(rows, 0.04, cka_threshold=0.55)
    assert thresholds["cka_threshold"] == 0.55
    assert [r["regime"] for r in rows] == ["I", "II-A", "II-B", "I", "I"]
    all_bad = [{"mc": -1.0, "cka": 0.9}]
    assert assign_regimes(all_bad, 0.1)["cka_threshold"] is None and all_bad[0]["regime"] == "I"
    assert classify(0.0, 0.3, 0.1, None) == "II-A"
    assert csv_float(0.123456789) == 0.123457
