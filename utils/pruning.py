"""Unstructured masks over the prunable weights (every Conv2d and Linear weight).

A mask is a plain dict: parameter name -> float 0/1 tensor shaped like the weight (1 = kept).
Pruning counts are exact: sparsity s of N candidates zeroes exactly round(s·N) weights, the
lowest scores first (or the highest, with `prune_highest`), ties broken by position (layer
order, then flat index), so the same scores always give the same mask. Magnitude pruning is
this selection over |w|; pruning at initialisation uses it over SNIP, GraSP, SynFlow... scores.
BatchNorm parameters and biases are never candidates.

Two facts tell a degenerate mask from a test of its score (`mask_facts`): the layers it leaves
empty (`collapsed_layers`; an empty classifier makes the network a constant whatever else is
kept) and `chosen_by_score`, the share of removed weights the score decided (`ScoreChoice`).
How reports word a collapsed mask is `utils.plots.common.collapse_note` (no torch there).
"""
import hashlib

import torch

from utils.errors import UserError

SCOPES = ("global", "layerwise")


def num_to_prune(sparsity, n):
    return int(round(sparsity * n))


def _check_sparsity(sparsity):
    if not 0 <= sparsity <= 1:
        raise UserError(f"sparsity must be a fraction in [0, 1] (0.9 = 90% removed), got {sparsity}")


def _rank_mask(scores, k, prune_highest=False):
    """0/1 mask zeroing the k lowest (or highest) scores; the stable sort breaks ties by
    position, the earlier entry pruned first either way."""
    keep = torch.ones_like(scores)
    keep[torch.argsort(scores, descending=prune_highest, stable=True)[:k]] = 0
    return keep


def global_count_mask(scores, zeros, prune_highest=False):
    """Exact global selection over any scores (name -> tensor): exactly `zeros` entries pruned,
    the lowest scores (or the highest) across all layers at once, ties by position."""
    flat = torch.cat([s.detach().double().cpu().flatten() for s in scores.values()])
    if not 0 <= zeros <= flat.numel():
        raise ValueError(f"cannot prune {zeros} of {flat.numel()} entries")
    if torch.isnan(flat).any():
        raise UserError("pruning scores contain NaN (the scoring pass diverged); check the "
                        "initialisation and the score batch")
    keep = _rank_mask(flat, zeros, prune_highest)
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start:start + s.numel()].view(s.shape).float()
        start += s.numel()
    return out


def global_score_mask(scores, sparsity, prune_highest=False):
    """`global_count_mask` pruning round(sparsity · N) of the N scored entries."""
    _check_sparsity(sparsity)
    return global_count_mask(scores, num_to_prune(sparsity, sum(s.numel() for s in scores.values())),
                             prune_highest)


def _magnitude_scores(weights, mask):
    """|w| in float64, with already-pruned entries forced to -1 so they stay pruned first."""
    scores = {n: w.detach().abs().double().cpu() for n, w in weights.items()}
    if mask is not None:
        for n in scores:
            scores[n][mask[n].cpu().reshape(scores[n].shape) == 0] = -1.0
    return scores


def _check_only_removes_more(mask, name, k, n_total):
    """A later mask only removes more: asking for fewer zeros than `mask` has is refused."""
    already = sum(int((mask[n] == 0).sum()) for n in name)
    if already > k:
        where = "" if len(name) > 1 else f" in {name[0]}"
        raise UserError(f"the existing mask already removes {already} of {n_total} weights{where}; "
                        f"a sparsity that removes only {k} would bring pruned weights back "
                        "(a later mask only removes more): ask for a higher sparsity")


def global_magnitude_mask(weights, sparsity, mask=None):
    """Exact global top-k over |w| across all `weights` (name -> tensor).

    With `mask`, its zeros stay zeros (a later mask only removes more), so `sparsity` must be at
    least the mask's own.
    """
    _check_sparsity(sparsity)
    scores = _magnitude_scores(weights, mask)
    n_total = sum(s.numel() for s in scores.values())
    k = num_to_prune(sparsity, n_total)
    if mask is not None:
        _check_only_removes_more(mask, list(weights), k, n_total)
    return global_count_mask(scores, k)


def layerwise_magnitude_mask(weights, sparsity, mask=None):
    """The same fraction pruned from every layer separately (round(s·n_layer) each)."""
    _check_sparsity(sparsity)
    scores = _magnitude_scores(weights, mask)
    out = {}
    for n, w in weights.items():
        k = num_to_prune(sparsity, w.numel())
        if mask is not None:
            _check_only_removes_more(mask, [n], k, w.numel())
        out[n] = _rank_mask(scores[n].flatten(), k).view(w.shape).float()
    return out


def magnitude_mask_at_sparsity(weights, sparsity, scope="global", mask=None):
    """Magnitude pruning of `weights` at `sparsity`, over all layers at once or layer by layer."""
    if scope == "global":
        return global_magnitude_mask(weights, sparsity, mask)
    if scope == "layerwise":
        return layerwise_magnitude_mask(weights, sparsity, mask)
    raise UserError(f"unknown pruning scope {scope!r}; choose one of {', '.join(SCOPES)}")


def collapsed_layers(mask):
    """Names of the layers `mask` leaves empty (every weight removed), in the mask's order."""
    return [n for n, m in mask.items() if m.numel() and not bool((m != 0).any())]


class ScoreChoice:
    """How many removed weights a score decided, over one or more selections (SynFlow's rounds,
    IMP's rounds, one layer at a time for layer-wise masks).

    One selection keeps the weights `mask` keeps and removes those it zeroes that `before` kept
    (every zero without `before`). A removed weight is decided by the score when its score is
    strictly below the lowest kept score (strictly above the highest, `prune_highest`): every
    tie-break would have removed it. The rest were tied with a kept weight at the cut (e.g. all
    scores 0 once the classifier is gone) and were removed by position, not by score. With no
    weight kept every removal is decided (any ranking removes everything).
    `share` = decided / removed over all selections added, None when nothing was removed.
    """

    def __init__(self):
        self.decided = 0
        self.removed = 0

    def add(self, scores, mask, before=None, prune_highest=False, layerwise=False):
        """Count one selection (`layerwise`: one per layer, each with its own cut); returns self."""
        if layerwise:
            for n in mask:
                self.add({n: scores[n]}, {n: mask[n]}, None if before is None else {n: before[n]},
                         prune_highest)
            return self
        flat = torch.cat([scores[n].detach().double().cpu().flatten() for n in mask])
        keep = torch.cat([mask[n].detach().cpu().flatten() != 0 for n in mask])
        removed = ~keep
        if before is not None:
            removed &= torch.cat([before[n].detach().cpu().flatten() != 0 for n in mask])
        if keep.any():
            kept = flat[keep]
            beyond = flat > kept.max() if prune_highest else flat < kept.min()
        else:
            beyond = torch.ones_like(keep)
        self.decided += int((removed & beyond).sum())
        self.removed += int(removed.sum())
        return self

    @property
    def share(self):
        return self.decided / self.removed if self.removed else None


def chosen_by_score(scores, mask, prune_highest=False):
    """`ScoreChoice.share` of one selection of `mask` from `scores`."""
    return ScoreChoice().add(scores, mask, prune_highest=prune_highest).share


def magnitude_choice(weights, mask, before=None, scope="global", choice=None):
    """The `ScoreChoice` of a magnitude mask of `weights` (the removals `before` had not made):
    |w| against the global cut, or each layer's own with scope "layerwise"; added to `choice`
    when given (IMP's rounds), else a new one."""
    choice = ScoreChoice() if choice is None else choice
    return choice.add(_magnitude_scores(weights, before), mask, before, layerwise=scope == "layerwise")


def mask_facts(mask, classifier=None):
    """summary.json's collapse facts of `mask`: `collapsed_layers` and `classifier_collapsed`
    (`classifier`, the output layer's weight name, among them)."""
    empty = collapsed_layers(mask)
    return {"collapsed_layers": empty, "classifier_collapsed": classifier is not None and classifier in empty}


def random_mask_like(mask, generator):
    """A random mask with exactly the per-layer zero counts of `mask` (the random-ticket control)."""
    out = {}
    for n, m in mask.items():
        zeros = int((m == 0).sum())
        keep = torch.ones(m.numel())
        keep[torch.randperm(m.numel(), generator=generator)[:zeros]] = 0
        out[n] = keep.view(m.shape)
    return out


@torch.no_grad()
def apply_mask(model, mask):
    """Zero the pruned weights of `model` in place."""
    params = dict(model.named_parameters())
    for n, m in mask.items():
        params[n].mul_(m.to(params[n].device, params[n].dtype))
    return model


def sparsity_report(mask):
    """Per-layer and overall counts, JSON-ready."""
    layers = {n: {"total": m.numel(), "zeros": int((m == 0).sum()),
                  "sparsity": int((m == 0).sum()) / m.numel()} for n, m in mask.items()}
    total = sum(v["total"] for v in layers.values())
    zeros = sum(v["zeros"] for v in layers.values())
    return {"overall": {"total": total, "zeros": zeros, "sparsity": zeros / total}, "layers": layers}


def format_report(report):
    """The sparsity report as an aligned text table (one line per layer, then the total)."""
    rows = list(report["layers"].items()) + [("overall", report["overall"])]
    width = max(len(n) for n, _ in rows)
    lines = [f"  {'layer':<{width}}  {'zeros':>8} / {'total':<8} sparsity"]
    lines += [f"  {n:<{width}}  {v['zeros']:>8} / {v['total']:<8} {100 * v['sparsity']:6.2f}%"
              for n, v in rows]
    return "\n".join(lines)


def weights_fingerprint(state_dict):
    """SHA-256 of a state_dict's names and values: tells whether two checkpoints hold the same
    weights, so a finished run made from other weights is not mistaken for this one."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def without_layers(weights, ignore=()):
    """`weights` (name -> tensor) without the layers named in `ignore`, which unstructured pruning
    then leaves whole (e.g. the classifier, as open_lth does for ResNets). A name may be the
    parameter (`linear.weight`) or its module (`linear`); an unknown name is a UserError."""
    ignore = list(ignore)
    drop = set()
    for name in ignore:
        param = name if name in weights else f"{name}.weight"
        if param not in weights:
            raise UserError(f"--ignore-layers {name}: no prunable layer of that name; choose from "
                            f"{', '.join(n.removesuffix('.weight') for n in weights)}")
        drop.add(param)
    if drop and len(drop) == len(weights):
        raise UserError("--ignore-layers leaves no layer to prune; name fewer layers")
    return {n: w for n, w in weights.items() if n not in drop}
