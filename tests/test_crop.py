"""utils/crop.py: CroP scores against an explicit Hessian and finite differences, both EarlyCroP
detectors on synthetic series and on hand-made weight sequences (one that settles, one that only
slows at a learning-rate milestone, a random walk), the step schedule, exact masks from scores."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.resnet import CifarResNet
from utils.crop import (authors_prune_epoch, channel_gate_scores, crop_scores, detect_prune_epoch,
                        milestone_before, score_mask, step_schedule)
from utils.errors import UserError


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False))


def tiny_batches(n_batches=2, size=4, shape=(2, 3), classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=gen), torch.randint(0, classes, (size,), generator=gen))
            for _ in range(n_batches)]


def explicit_crop(net, batches, mask=None):
    """|θ ⊙ (Σ_b H_b) g| with the full Hessian over the weights, built entry by entry (float64)."""
    net = copy.deepcopy(net).double()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().flatten() for p in net.parameters()])

    def loss(flat, x, y):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[start:start + s.numel()].view(s)
            start += s.numel()
        return F.cross_entropy(torch.func.functional_call(net, params, (x.double(),)), y)

    g = sum(torch.autograd.functional.jacobian(lambda t: loss(t, x, y), theta) for x, y in batches)
    hessian = sum(torch.autograd.functional.hessian(lambda t: loss(t, x, y), theta) for x, y in batches)
    if mask is not None:
        g = g * torch.cat([mask[n].flatten().double() for n in names])
    return (theta * (hessian @ g)).abs()


def test_crop_scores_equal_theta_times_explicit_hessian_gradient():
    net, batches = tiny_mlp(), tiny_batches()
    scores = crop_scores(net, batches)
    assert list(scores) == ["1.weight", "3.weight"]
    got = torch.cat([s.flatten() for s in scores.values()]).double()
    want = explicit_crop(net, batches)
    assert want.max() > 1e-3  # a real, non-degenerate check
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())
    # with a mask: z sums over the survivors only, and the pruned weights score zero
    mask = {"1.weight": (torch.arange(30) % 3 != 0).float().view(5, 6), "3.weight": torch.ones(3, 5)}
    masked = copy.deepcopy(net)
    with torch.no_grad():
        masked[1].weight.mul_(mask["1.weight"])
    got = torch.cat([s.flatten() for s in crop_scores(masked, batches, mask).values()]).double()
    want = explicit_crop(masked, batches, mask)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())
    assert torch.all(got[:30][mask["1.weight"].flatten() == 0] == 0)
    assert not torch.allclose(want, explicit_crop(masked, batches))  # the mask changes Hg
    # the scored model is untouched (a copy is scored)
    assert all(not p.requires_grad or p.grad is None for p in net.parameters())


def test_gate_gradients_equal_finite_differences():
    torch.manual_seed(0)
    net = CifarResNet(8).eval()  # three blocks of 16/32/64 inner channels
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in a trained network
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    batches = tiny_batches(2, 3, (3, 8, 8), 10)
    scores = channel_gate_scores(net, batches)
    assert [len(s) for s in scores] == [16, 32, 64]

    ref = copy.deepcopy(net).double()
    weights = {n: m.weight for n, m in ref.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    params = list(weights.values())
    gates = [torch.ones(b.conv1.out_channels, dtype=torch.float64) for b in ref.blocks()]
    for b, c in zip(ref.blocks(), gates):
        b.conv1.register_forward_hook(lambda m, i, out, c=c: out * c.view(1, -1, 1, 1))
    data = [(x.double(), y) for x, y in batches]
    g = [sum(ws) for ws in zip(*(torch.autograd.grad(F.cross_entropy(ref(x), y), params) for x, y in data))]

    def z():  # Σ_b gᵀ∇L_b with g fixed: the function whose gate derivative CroP-S scores
        return sum(sum((gi * gr).sum() for gi, gr in zip(g, torch.autograd.grad(F.cross_entropy(ref(x), y), params)))
                   for x, y in data)

    eps = 1e-5
    for block, channel in ((0, 3), (1, 17), (2, 40), (2, 63)):
        gates[block][channel] += eps
        up = z()
        gates[block][channel] -= 2 * eps
        down = z()
        gates[block][channel] += eps
        fd = abs(float(up - down) / (2 * eps))
        assert fd > 1e-6
        assert float(scores[block][channel]) == pytest.approx(fd, rel=2e-3)


def test_detector_on_synthetic_series():
    delta = [0.0, 10.0, 15.0, 17.0, 17.5, 17.6]  # ratios: -, -, 0.5, 0.2, 0.05, 0.01
    ratio, epoch, fired = detect_prune_epoch(delta, 0.1, 100)
    assert ratio[:2] == [None, None] and ratio[2:] == pytest.approx([0.5, 0.2, 0.05, 0.01])
    assert (epoch, fired) == (4, True)
    assert detect_prune_epoch(delta, 0.3, 100)[1:] == (3, True)
    assert detect_prune_epoch(delta, 0.6, 100)[1:] == (2, True)  # never before epoch 2
    assert detect_prune_epoch(delta, 0.001, 100)[1:] == (5, False)  # never fires: the cap, clamped
    assert detect_prune_epoch(delta, 0.1, 3)[1:] == (3, False)  # fires only after --prune-by
    with pytest.raises(UserError, match="epoch 1 is 0"):
        detect_prune_epoch([0.0, 0.0, 1.0], 0.1, 100)
    with pytest.raises(UserError, match="--threshold"):
        detect_prune_epoch(delta, 0, 100)


# --- both rules on hand-made weight sequences θ_0, θ_1, …; the expected epochs are worked out by
# hand from the rules' definitions (comments), not taken from the code.

D = 64  # parameters; the direction e_D−1 holds θ_0 so that ‖θ_1‖ is not 1


def unit(i):
    v = torch.zeros(D, dtype=torch.float64)
    v[i] = 1.0
    return v


def paper_input(thetas):
    """Δ_t = ‖θ_t − θ_0‖²."""
    return [float((t - thetas[0]).square().sum()) for t in thetas]


def authors_input(thetas):
    """(‖θ_t − θ_1‖₂, ‖θ_1‖₂) per epoch; epoch 0 comes before θ_1."""
    return [(None, None)] + [(float((t - thetas[1]).norm()), float(thetas[1].norm())) for t in thetas[1:]]


def settling(epochs=12):
    """θ_t = θ_0 + (1 − 2^−t)·v: each epoch moves half as far as the one before."""
    theta0, v = 3 * unit(D - 1), unit(0) + unit(1)
    return [theta0 + (1 - 0.5 ** t) * v for t in range(epochs + 1)]


def ballistic_then_drop(milestone=10, epochs=20):
    """Constant steps v until the milestone, then steps 0.1·v (the learning rate ×0.1)."""
    theta, out = 3 * unit(D - 1), []
    for t in range(epochs + 1):
        out.append(theta.clone())
        theta = theta + (1.0 if t < milestone else 0.1) * unit(0)
    return out


def orthogonal_walk(epochs=40, milestone=None):
    """A random walk as it looks in many dimensions: equal, mutually orthogonal steps (step t
    along e_t), so ‖θ_t − θ_s‖² = t − s; after `milestone` the steps shrink to 0.1."""
    theta, out = 3 * unit(D - 1), [3 * unit(D - 1)]
    for t in range(1, epochs + 1):
        theta = theta + (0.1 if milestone is not None and t > milestone else 1.0) * unit(t - 1)
        out.append(theta.clone())
    return out


def test_authors_rule_on_a_settling_sequence():
    # θ_t − θ_1 = (½ − 2^−t)·v: d_t ∝ ½ − 2^−t, d_2 ∝ ¼, |d_t − d_{t−1}| ∝ 2^−t (⅛ at t = 3)
    rule = authors_prune_epoch(authors_input(settling()), 1 - 0.9, 100)
    norm = (9 + 0.25 * 2) ** 0.5  # ‖θ_1‖ = ‖3·e + ½·v‖
    assert rule["d"][1] == 0 and rule["d"][2] == pytest.approx(0.25 * 2 ** 0.5 / norm)
    assert rule["threshold"] == pytest.approx(0.1 * rule["d"][2])
    assert rule["change"][3] == pytest.approx(0.125 * 2 ** 0.5 / norm)
    # τ = (1 − s)·¼: 2^−t < τ first at t = 6 for s = 0.9 (1/64 < 1/40), t = 4 for s = 0.7
    # (1/16 < 3/40), t = 3 for s = 0.3 (1/8 < 7/40): never before 3 (d_2 < (1 − s)·d_2 is false)
    assert (rule["prune_epoch"], rule["fired"]) == (6, True)
    assert authors_prune_epoch(authors_input(settling()), 0.3, 100)["prune_epoch"] == 4
    assert authors_prune_epoch(authors_input(settling()), 0.7, 100)["prune_epoch"] == 3
    capped = authors_prune_epoch(authors_input(settling()), 0.1, 5)
    assert (capped["prune_epoch"], capped["fired"]) == (5, False)  # the cap: not fired by epoch 5


def test_paper_rule_on_a_settling_sequence():
    # Δ_t = (1 − 2^−t)²·2: Δ_1 = ½; ratio_t = |Δ_t − Δ_{t−1}| / Δ_1 = 1.25, 0.8125, 0.453, 0.238,
    # 0.122, 0.0618 at t = 2…7
    ratio, epoch, fired = detect_prune_epoch(paper_input(settling()), 1 - 0.9, 100)
    assert ratio[2:8] == pytest.approx([1.25, 0.8125, 0.453125, 0.23828125, 0.1220703125, 0.061767578125])
    assert (epoch, fired) == (7, True)
    assert detect_prune_epoch(paper_input(settling()), 0.3, 100)[1] == 5


def test_authors_rule_fires_only_at_the_milestone_on_steady_steps():
    # before the milestone every change equals d_2 (> τ = (1 − s)·d_2); after it 0.1·d_2,
    # below τ when 1 − s > 0.1: at epoch 11, the first epoch at the lowered rate
    seq = authors_input(ballistic_then_drop(milestone=10))
    rule = authors_prune_epoch(seq, 1 - 0.6, 100)
    assert rule["change"][3:11] == pytest.approx([rule["d"][2]] * 8)
    assert (rule["prune_epoch"], rule["fired"]) == (11, True)
    assert milestone_before(rule["prune_epoch"], [10, 15]) == 10
    late = authors_prune_epoch(seq, 1 - 0.95, 100)  # 0.1·d_2 is not below 0.05·d_2: never fires
    assert (late["prune_epoch"], late["fired"]) == (20, False)


def test_paper_rule_fires_only_at_the_milestone_on_a_walk():
    # Δ_t = t up to the milestone (ratio 1), then Δ grows by 0.01 an epoch (ratio 0.01)
    ratio, epoch, fired = detect_prune_epoch(paper_input(orthogonal_walk(20, milestone=10)), 1 - 0.98, 100)
    assert ratio[2:11] == pytest.approx([1.0] * 9) and ratio[11] == pytest.approx(0.01)
    assert (epoch, fired) == (11, True) and milestone_before(epoch, [10]) == 10


def test_random_walk_the_paper_ratio_never_fires_the_authors_rule_does():
    walk = orthogonal_walk(40)
    # ratio of squared distances: (t − (t−1)) / 1 = 1 at every epoch: never below 1 − s
    ratio, epoch, fired = detect_prune_epoch(paper_input(walk), 1 - 0.6, 100)
    assert ratio[2:] == pytest.approx([1.0] * 39) and (epoch, fired) == (40, False)
    # d_t ∝ √(t − 1): change_t = √(t−1) − √(t−2) = 1 / (√(t−1) + √(t−2)), d_2 ∝ 1; below 1 − s
    # when √(t−1) + √(t−2) > 1 / (1 − s): s = 0.8 -> 5, first at t = 8 (√7 + √6 = 5.10, √6 + √5 = 4.69)
    rule = authors_prune_epoch(authors_input(walk), 1 - 0.8, 100)
    assert rule["change"][3] == pytest.approx((2 ** 0.5 - 1) * rule["d"][2])
    assert (rule["prune_epoch"], rule["fired"]) == (8, True)
    # s = 0.9 -> 10: t = 27 (√26 + √25 = 10.10, √25 + √24 = 9.90)
    assert authors_prune_epoch(authors_input(walk), 1 - 0.9, 100)["prune_epoch"] == 27


def test_milestone_flag_and_bad_series():
    assert [milestone_before(t, [15, 23]) for t in (15, 16, 17, 18, 24, 30)] == [None, 15, 15, None, 23, None]
    with pytest.raises(UserError, match="epoch 2"):
        authors_prune_epoch([(None, None), (0.0, 1.0)], 0.1, 100)
    with pytest.raises(UserError, match="θ_1"):
        authors_prune_epoch([(None, None), (0.0, 0.0), (0.0, 0.0)], 0.1, 100)


def test_step_schedule():
    assert step_schedule(0.9) == pytest.approx([0.5, 0.7, 0.8, 0.85, 0.875, 0.8875, 0.9])
    assert step_schedule(0.6) == pytest.approx([0.5, 0.55, 0.575, 0.5875, 0.59375, 0.596875, 0.6])
    assert step_schedule(0.5) == pytest.approx([0.25, 0.375, 0.4375, 0.46875, 0.484375, 0.4921875, 0.5])
    assert step_schedule(0.2) == [0.2]  # below b the schedule would un-prune: only s itself
    assert step_schedule(0.98)[-1] == 0.98 and step_schedule(0.98)[0] == 0.5


def test_score_mask_is_the_exact_top_k_with_ties_by_position():
    scores = {"a": torch.tensor([[3.0, 1.0], [1.0, 5.0]]), "b": torch.tensor([1.0, 0.5, 2.0])}
    mask = score_mask(scores, 3 / 7)  # 3 of 7: 0.5, then the first two 1.0s by position
    assert mask["a"].tolist() == [[1, 0], [0, 1]] and mask["b"].tolist() == [1, 0, 1]
    more = score_mask({"a": torch.tensor([[0.1, 9.0], [9.0, 0.2]]), "b": torch.tensor([9.0, 9.0, 0.3])},
                      4 / 7, mask)  # earlier zeros stay zero, the lowest survivor goes next
    assert more["a"].tolist() == [[0, 0], [0, 1]] and more["b"].tolist() == [1, 0, 1]
    with pytest.raises(UserError):
        score_mask(scores, 1 / 7, mask)
