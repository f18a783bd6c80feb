"""utils/crop.py: CroP scores against an explicit Hessian and finite differences, the EarlyCroP
detector on synthetic series, the step schedule, exact masks from scores."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.resnet import CifarResNet
from utils.crop import (channel_gate_scores, crop_scores, detect_prune_epoch, score_mask,
                        step_schedule)
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
