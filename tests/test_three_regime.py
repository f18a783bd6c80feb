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
from utils.three_regime import (CKA_THRESHOLD, MC_THRESHOLD, assign_regimes, batch_schedule, batchnorms,
                                check_grid, classify, conv_density_mask, conv_weights, csv_float, density_name,
                                interpolate, linear_cka, linear_path, loss_barrier, mc_point, mc_source,
                                mode_connectivity, path_alphas, reestimate_bn, softmax_outputs,
                                summary_row, temperature_name)


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
    assert mode_connectivity([0.3] * 11, 1000) == 0.0
    assert loss_barrier(alphas, [1.7] * 11) == 0.0


def test_mc_and_barrier_of_hand_made_curves():
    # a bump of error in the middle: mid = 0.1, E(0.5) = 0.3 -> mc = -0.2 (a barrier)
    assert mode_connectivity([0.1, 0.3, 0.1], 1000) == pytest.approx(-0.2)
    # a dip: mid = 0.2, deepest point 0.05 -> mc = +0.15
    assert mode_connectivity([0.2, 0.1, 0.05, 0.1, 0.2], 1000) == pytest.approx(0.15)
    # endpoints count: mid 0.2, |0.2 - E| is 0.2 at alpha 0 and alpha 1, 0.15 inside; the first
    # maximum (alpha 0) is taken: mc = 0.2 - 0.0
    assert mode_connectivity([0.0, 0.05, 0.4], 1000) == pytest.approx(0.2)
    # loss 3 at alpha 0.5 against the chord 1.5 -> 1.5; a path below its chord -> 0
    assert loss_barrier([0, 0.5, 1], [1, 3, 2]) == pytest.approx(1.5)
    assert loss_barrier([0, 0.5, 1], [1, 0.5, 2]) == 0.0
    # chord 2 - alpha: gaps 0.75, 0.9, 0.95 inside; the largest is at alpha 0.75
    assert loss_barrier(path_alphas(5), [2, 2.5, 2.4, 2.2, 1]) == pytest.approx(2.2 - 1.25)


def rounded(errors):
    """The error fractions as a CSV with 6 significant digits would hold them."""
    return [float(f"{e:.6g}") for e in errors]


@pytest.mark.parametrize("n", [1017, 5085, 50000])
def test_the_endpoint_tie_is_decided_by_the_first_point_not_by_rounding(n):
    # Paths whose largest deviation from the endpoints' mean is the endpoint tie itself:
    # |mid - E0| = |mid - E1| = |W1 - W0| / 2n, every interior point deviating less. The rule
    # (tie within a quarter image, first point taken) must pick alpha 0 for exact counts, for
    # fractions rounded to 6 digits, and for fractions off by a few ulps either way; then
    # mc = mid - E0 = (E1 - E0) / 2, whose sign only says which copy is the worse one.
    for wrong in ([100, 130, 125, 140, 160],   # E0 < E1: mc = +30 images
                  [160, 140, 150, 131, 100],   # E0 > E1: mc = -30 images
                  [100, 130, 160]):            # an interior point exactly at the mean
        exact = [w / n for w in wrong]
        half_gap = (wrong[-1] - wrong[0]) / (2 * n)
        variants = [exact, rounded(exact),
                    [e * (1 + 1e-15) if k == len(exact) - 1 else e for k, e in enumerate(exact)],
                    [e * (1 - 1e-15) if k == 0 else e for k, e in enumerate(exact)]]
        for errors in variants:
            mc, star = mc_point(errors, n)
            assert star == 0 and mc_source(star, len(errors)) == "endpoint", (wrong, errors)
            assert mc == pytest.approx(half_gap, rel=1e-5)
    # the naive argmax on the perturbed E0 > E1 path would take alpha 1 and flip the sign
    errors = [160 / n, 140 / n, 150 / n, 131 / n, (100 / n) * (1 - 1e-15)]
    assert mc_point(errors, n)[0] < 0


def test_an_interior_point_beyond_the_tie_by_one_image_wins():
    n = 5085
    # W = 100 ... 160: mid 130 images; interior 161 deviates 31 > 30: a barrier of 31 images
    for errors in ([w / n for w in (100, 120, 161, 150, 160)], rounded([w / n for w in (100, 120, 161, 150, 160)])):
        mc, star = mc_point(errors, n)
        assert star == 2 and mc_source(star, 5) == "interior"
        assert mc == pytest.approx(-31 / n, rel=1e-5)
    # a dip one image deeper than the tie: mid 130, interior 99 deviates 31
    mc, star = mc_point([w / n for w in (100, 99, 160)], n)
    assert (star, mc) == (1, pytest.approx(31 / n))


def test_a_real_self_pair_path_is_flat():
    train = random_split(150)
    net = small_net(0)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    rows = linear_path(small_net(1), params, params, train, points=3)
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert len({r["train_loss"] for r in rows}) == 1 and len({r["train_error"] for r in rows}) == 1
    assert mode_connectivity([r["train_error"] for r in rows], 150) == 0.0
    assert {r["train_wrong"] for r in rows} == {round(rows[0]["train_error"] * 150)} and rows[0]["train_images"] == 150
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


@pytest.mark.parametrize("max_batches, batch_size, all_batches", [(0, 128, 3), (2, 128, 3), (0, None, 5)])
def test_bn_reestimation_is_the_exact_average_of_batch_statistics(max_batches, batch_size, all_batches):
    train = random_split(300)  # batches of 128, 128, 44; by default (64, the authors') 4 x 64 + 44
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
    reestimate_bn(net, train, max_batches, *([batch_size] if batch_size else []))
    for h in handles:
        h.remove()
    expected_batches = max_batches or all_batches
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
    regimes = assign_regimes(rows, 0.1, 0.65)
    # mc = -0.1 is not below -0.1: connected
    assert regimes["mc_threshold"] == 0.1 and regimes["cka_threshold"] == 0.65
    assert [r["regime"] for r in rows] == ["I", "II-A", "II-B", "II-B", "II-A"]
    regimes = assign_regimes(rows, 0.04, cka_threshold=0.55)
    assert regimes["cka_threshold"] == 0.55 and regimes["cka_threshold_from"] == "--cka-threshold"
    assert [r["regime"] for r in rows] == ["I", "II-A", "II-B", "I", "I"]
    assert classify(0.0, math.nan, 0.1, 0.5) == "II-A"  # an undefined CKA is not II-B
    assert csv_float(0.123456789) == 0.123457


def test_default_thresholds_are_fixed_numbers_not_statistics_of_the_data():
    # the same cell gets the same regime whatever the other cells are: no median of the data
    cell = {"mc": -0.05, "cka": 0.985}
    for others in ([], [{"mc": 0.0, "cka": 0.999}] * 5, [{"mc": 0.0, "cka": 0.2}] * 5):
        rows = [dict(cell)] + [dict(o) for o in others]
        regimes = assign_regimes(rows)
        assert (regimes["mc_threshold"], regimes["cka_threshold"]) == (MC_THRESHOLD, CKA_THRESHOLD) == (0.1, 0.98)
        assert "ours" in regimes["cka_threshold_from"] and rows[0]["regime"] == "II-B"


def test_an_endpoint_tie_beyond_the_threshold_is_undecided_never_regime_one():
    # |mc| = 0.15 from the endpoint tie: interior points deviate at most 0.15, so whether a
    # barrier beyond 0.1 exists is unknown, whichever copy happens to be the worse one
    for mc in (-0.15, 0.15):
        assert classify(mc, 0.99, 0.1, 0.98, "endpoint") == "undecided"
    # |mc| within the threshold: no point deviates more than 0.1, so connected
    assert classify(-0.08, 0.99, 0.1, 0.98, "endpoint") == "II-B"
    assert classify(-0.15, 0.99, 0.1, 0.98, "interior") == "I"
    rows = [{"mc": -0.15, "cka": 0.5, "mc_from": "endpoint"}]
    regimes = assign_regimes(rows)
    assert rows[0]["regime"] == "undecided" and rows[0]["robust"] == "no"
    assert regimes["cells"][0]["mc_from"] == "endpoint" and regimes["cells"][0]["robust"] is False


def test_sensitivity_grid_marks_cells_whose_regime_hangs_on_a_threshold():
    rows = [{"mc": -0.5, "cka": 0.5},      # I at every mc cut-off 0.05, 0.1, 0.2: robust
            {"mc": -0.15, "cka": 0.99},    # I at 0.05 and 0.1, II-B at 0.2: not robust
            {"mc": 0.0, "cka": 0.985},     # II-B at cka 0.97, 0.98; II-A at 0.99: not robust
            {"mc": 0.0, "cka": 0.995},     # II-B everywhere: robust
            {"mc": -0.01, "cka": 0.90}]    # II-A everywhere: robust
    regimes = assign_regimes(rows)
    grid = regimes["sensitivity"]
    assert grid["mc_thresholds"] == [0.05, 0.1, 0.2] and grid["cka_thresholds"] == [0.97, 0.98, 0.99]
    assert [r["regime"] for r in rows] == ["I", "I", "II-B", "II-B", "II-A"]
    assert [r["robust"] for r in rows] == ["yes", "no", "no", "yes", "yes"]
    cells = regimes["cells"]
    assert len(cells[1]["regimes_on_grid"]) == 9
    assert cells[1]["regimes_on_grid"]["mc 0.2 / cka 0.98"] == "II-B"
    assert cells[1]["regimes_on_grid"]["mc 0.05 / cka 0.99"] == "I"
    assert cells[2]["regimes_on_grid"]["mc 0.1 / cka 0.99"] == "II-A"


def test_a_cell_with_any_endpoint_pair_says_so():
    copies = [{"start_test_acc": 10.0, "test_acc": 50.0}] * 3
    pairs = [{"mc": -0.2, "barrier": 0.1, "cka": 0.9, "mc_from": "interior"},
             {"mc": 0.1, "barrier": 0.1, "cka": 0.9, "mc_from": "endpoint"},
             {"mc": -0.2, "barrier": 0.1, "cka": 0.9, "mc_from": "interior"}]
    row = summary_row("epochs", 10, 0.1, 90.0, copies, pairs)
    assert (row["mc_from"], row["mc_endpoint_pairs"]) == ("endpoint", 1)
    row = summary_row("epochs", 10, 0.1, 90.0, copies, [pairs[0]])
    assert (row["mc_from"], row["mc_endpoint_pairs"]) == ("interior", 0)
