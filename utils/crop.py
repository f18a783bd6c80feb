"""CroP (Rachwan et al. 2022): scores that keep the gradient flow, and EarlyCroP's pruning time.

Gradient flow GF = gᵀg with g = ∇_θ L. A weight's CroP score is I = |θ ⊙ Hg|, the size of its
first-order effect on gᵀg (H the Hessian of L). Computed by double backprop on a copy of the
network in eval mode, in fp32 without autocast (and on CUDA without TF32: `strict_fp32`), on a
few unaugmented training batches:

    g = Σ_b ∇L_b                       (prunable weights only, detached)
    z = Σ_b gᵀ ∇L_b                    (over the surviving weights, graph kept)
    I = |θ ⊙ ∂z/∂θ| = |θ ⊙ Hg|         (unstructured, CroP-U)
    S_c = |∂z/∂c| at c = 1             (structured, CroP-S: c a gate on each prunable channel)

L_b is the mean cross-entropy of batch b. ∂z/∂θ is accumulated batch by batch (z is a sum), so
only one batch's graph is alive at a time.

CroP-S gates: a multiplicative gate of ones per Task 4 channel (the inner channel of each
residual block, `utils.channels`) on conv1's output before bn1, as forward hooks on a copy, so
the network's state_dict and its forward value are unchanged (the gate is 1).

The pruning time (EarlyCroP), two rules; if a rule has not fired by `prune_by`, prune there:
  authors (`authors_prune_epoch`, the authors' trainer): d_t = ‖θ_t − θ_1‖₂ / ‖θ_1‖₂ over every
    parameter, θ_1 the weights after epoch 1 (so d_1 = 0); τ = factor · d_2, fixed at epoch 2;
    prune at the first t ≥ 2 with |d_t − d_{t−1}| < τ (at t = 2 that is d_2 < factor · d_2,
    never for factor < 1: in effect the first t ≥ 3). factor = 1 − sparsity.
  paper (`detect_prune_epoch`, the paper's formula as this repository first read it): with
    Δ_t = ‖θ_t − θ₀‖² over the Conv/Linear weights (the dense run's `weight_distance`), prune at
    the first t ≥ 2 with |Δ_t − Δ_{t−1}| / Δ₁ < threshold.
"""
import copy

import torch
import torch.nn.functional as F

from models import prunable_weights
from utils.errors import UserError
from utils.pruning import global_score_mask, num_to_prune
from utils.train import cpu_generator, strict_fp32


# --- the score batches --------------------------------------------------------------------------

def draw_score_batches(split, n_batches, batch_size, seed):
    """A seeded draw of n_batches · batch_size distinct training images (fewer if the split is
    smaller), unaugmented: {indices, images (uint8), labels, batch_size}, on the CPU."""
    if n_batches < 1:
        raise UserError(f"--crop-batches must be >= 1, got {n_batches}")
    n = min(n_batches * batch_size, len(split))
    idx = torch.randperm(len(split), generator=cpu_generator(seed, "crop_batches"))[:n]
    return {"indices": idx, "images": split.images[idx.to(split.device)].cpu(),
            "labels": split.labels[idx.to(split.device)].cpu(), "batch_size": batch_size}


def score_batches_on(draw, device):
    """[(pixels in [0, 1], labels)] batches of a `draw_score_batches` dict, on `device`."""
    x = draw["images"].to(device).float().div(255)
    y = draw["labels"].to(device)
    bs = draw["batch_size"]
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]


# --- the scores ---------------------------------------------------------------------------------

def _scoring_copy(model):
    net = copy.deepcopy(model).float().eval()
    net.to(memory_format=torch.contiguous_format)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _gradient_flow_grads(net, weights, batches, mask, extra=()):
    """(∂z/∂weights, ∂z/∂extra) with z = Σ_b gᵀ∇L_b, g = Σ_b ∇L_b over `weights` (detached)."""
    with strict_fp32(next(net.parameters()).device):
        return _gradient_flow_grads_fp32(net, weights, batches, mask, extra)


def _gradient_flow_grads_fp32(net, weights, batches, mask, extra):
    for w in weights.values():
        w.requires_grad_(True)
    params = list(weights.values())
    keep = [None if mask is None else mask[n].to(w.device, w.dtype) for n, w in weights.items()]
    g = [torch.zeros_like(w) for w in params]
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), params)
        g = [a + b for a, b in zip(g, grads)]
    g = [gi if k is None else gi * k for gi, k in zip(g, keep)]  # surviving weights only
    hg = [torch.zeros_like(w) for w in params]
    hc = [torch.zeros_like(c) for c in extra]
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=True)
        z = sum((gi * gr).sum() for gi, gr in zip(g, grads))
        out = torch.autograd.grad(z, params + list(extra), allow_unused=True)
        hg = [a + (b if b is not None else 0) for a, b in zip(hg, out[:len(params)])]
        hc = [a + (b if b is not None else 0) for a, b in zip(hc, out[len(params):])]
    return hg, hc


def crop_scores(model, batches, mask=None):
    """Name -> |θ ⊙ Hg| (float32, CPU) for every prunable weight of `model` (CroP-U).

    `batches`: [(x, y)] on the model's device. `mask` (name -> 0/1): the surviving weights; z
    sums over them, and the caller's weights are expected to hold the mask's zeros already.
    The model itself is not touched (a copy is scored).
    """
    net = _scoring_copy(model)
    weights = prunable_weights(net)
    hg, _ = _gradient_flow_grads(net, weights, batches, mask)
    return {n: (w.detach() * h).abs().cpu() for (n, w), h in zip(weights.items(), hg)}


def channel_gate_scores(model, batches):
    """|∂z/∂c| at c = 1, one tensor per residual block (its inner channels, block order): the
    CroP-S score of every prunable channel. The gates multiply conv1's output before bn1."""
    net = _scoring_copy(model)
    device = next(net.parameters()).device
    gates = [torch.ones(b.conv1.out_channels, device=device, requires_grad=True) for b in net.blocks()]
    hooks = [b.conv1.register_forward_hook(lambda m, inp, out, c=c: out * c.view(1, -1, 1, 1))
             for b, c in zip(net.blocks(), gates)]
    try:
        _, hc = _gradient_flow_grads(net, prunable_weights(net), batches, None, gates)
    finally:
        for h in hooks:
            h.remove()
    return [h.detach().abs().cpu() for h in hc]


def random_channel_scores(model, seed):
    """Random-S: U(0, 1) per prunable channel from its own seed stream."""
    gen = cpu_generator(seed, "random_s")
    return [torch.rand(b.conv1.out_channels, generator=gen) for b in model.blocks()]


# --- masks from scores --------------------------------------------------------------------------

def score_mask(scores, sparsity, mask=None):
    """Exact global top-k (`utils.pruning.global_score_mask`): exactly round(s·N) weights pruned,
    the lowest scores first, ties by position; entries `mask` already prunes stay pruned (they
    score −1, below every CroP score, which are >= 0)."""
    if mask is not None:
        already = sum(int((m == 0).sum()) for m in mask.values())
        if already > num_to_prune(sparsity, sum(t.numel() for t in scores.values())):
            raise UserError(f"the mask already prunes {already} weights, more than sparsity {sparsity} allows")
        scores = {n: t.detach().double().cpu().masked_fill(mask[n].cpu().reshape(t.shape) == 0, -1.0)
                  for n, t in scores.items()}
    return global_score_mask(scores, sparsity)


def step_schedule(sparsity):
    """EarlyCroP-U's sparsity steps, all taken at the pruning epoch (the authors' code):
    s − (s − b)·2^−i for i = 0…5, then s, with b = ½ (¼ if s ≤ ½). Steps above s (s < b) are
    dropped, so the schedule only ever removes more and always ends at s."""
    base = 0.25 if sparsity <= 0.5 else 0.5
    steps = [sparsity - (sparsity - base) * 0.5 ** i for i in range(6)] + [sparsity]
    out = []
    for s in steps:
        if s <= sparsity and (not out or s > out[-1]):
            out.append(s)
    return out


# --- the pruning time ---------------------------------------------------------------------------

def detect_prune_epoch(delta, threshold, prune_by):
    """EarlyCroP's rule on Δ_t (index = epoch, Δ_0 = 0).

    Returns (ratio list with None for t < 2, prune_epoch, fired). The search stops at
    `prune_by` (clamped to the last epoch); if the rule never fires by then, prune there.
    """
    if len(delta) < 2:
        raise UserError("the dense run has no epoch 1 in its trajectory; EarlyCroP needs Δ_1")
    if not delta[1] > 0:
        raise UserError(f"the dense run's weight_distance at epoch 1 is {delta[1]} (the weights did not "
                        "move): the detector divides by it; train the dense run with --lr > 0")
    if not threshold > 0:
        raise UserError(f"--threshold must be > 0, got {threshold}")
    ratio = [None, None] + [abs(delta[t] - delta[t - 1]) / delta[1] for t in range(2, len(delta))]
    last = min(prune_by, len(delta) - 1)
    for t in range(2, last + 1):
        if ratio[t] < threshold:
            return ratio, t, True
    return ratio, last, False


def authors_prune_epoch(distances, factor, prune_by):
    """EarlyCroP's rule as the authors' trainer runs it, on [(‖θ_t − θ_1‖₂, ‖θ_1‖₂)] per epoch
    (index = epoch; entry 0, before θ_1 exists, is ignored).

    Returns {"d": [None, d_1, …], "change": [None, None, |d_2 − d_1|, …], "threshold": τ,
    "prune_epoch": t, "fired": bool}; the search stops at `prune_by` (clamped to the last epoch).
    """
    if len(distances) < 3:
        raise UserError("the dense run has fewer than 2 epochs; the authors' EarlyCroP rule fixes its "
                        "threshold at epoch 2")
    if not factor > 0:
        raise UserError(f"--threshold must be > 0, got {factor}")
    norm = distances[1][1]
    if not norm > 0:
        raise UserError(f"the dense run's ‖θ_1‖ is {norm}: the authors' rule divides by it")
    d = [None] + [dist / n for dist, n in distances[1:]]
    change = [None, None] + [abs(d[t] - d[t - 1]) for t in range(2, len(d))]
    threshold = factor * d[2]
    last = min(prune_by, len(d) - 1)
    epoch = next((t for t in range(2, last + 1) if change[t] < threshold), None)
    return {"d": d, "change": change, "threshold": threshold,
            "prune_epoch": last if epoch is None else epoch, "fired": epoch is not None}


def milestone_before(epoch, milestones, window=2):
    """The learning-rate milestone m with m < epoch ≤ m + window (epoch is among the first
    `window` epochs trained at the lowered rate), or None: a prune epoch there measures the
    schedule, not the weights settling."""
    hits = [m for m in milestones if 0 < epoch - m <= window]
    return max(hits) if hits else None
