"""Channel pruning by BatchNorm scaling factors (network slimming): selection, surgery, cost.

Prunable channels are the inner channels of every residual block: the output of its `conv1`,
normalised by its `bn1`. Pruning them shrinks conv1's output and conv2's input only, so the
residual stream (block outputs, shortcuts, the stem and the classifier) keeps its width and no
shortcut has to be re-indexed.

Selection is one global threshold on |γ| over all those channels: exactly round(ratio·C) of
the C channels go, the smallest |γ| first, ties broken by position (block order, then channel
index), so the same γ always give the same channels. A compact network also needs every block
to keep at least one channel; when the threshold empties a block, that block keeps its largest
|γ| and the smallest |γ| kept elsewhere goes instead, so the count stays exact (see
`select_channels`). The Early-Bird detector uses the plain threshold (`threshold_masks`).
"""
import copy
import re
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import get_model
from utils.pruning import ScoreChoice
from utils.train import autocast

PRUNABLE_BN = re.compile(r"^layer(\d+)\.(\d+)\.bn1$")


def prunable_bn_names(names):
    """The blocks' inner BatchNorms (`layerS.I.bn1`) among `names`, in network order."""
    found = [(int(m[1]), int(m[2]), n) for n in names if (m := PRUNABLE_BN.match(n))]
    return [n for *_, n in sorted(found)]


def block_gammas(model):
    """γ of every block's bn1, in block order (the prunable channels)."""
    return [b.bn1.weight.detach() for b in model.blocks()]


def num_to_remove(ratio, total):
    return int(round(ratio * total))


def global_keep_mask(scores, n_remove):
    """Bool mask over the last dim keeping all but the n_remove lowest scores.

    A stable sort puts equal scores in position order, so ties go earliest position first.
    Works on one vector or on a batch of rows (one row per epoch in the detector).
    """
    order = torch.argsort(scores, dim=-1, stable=True)
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, order[..., :n_remove], False)
    return keep


def _scores(gammas):
    # float64 so that the ranking never depends on the dtype γ was stored in
    return torch.cat([g.detach().abs().double().cpu().flatten() for g in gammas])


def threshold_masks(gammas, ratio):
    """The exact global-threshold masks (bool, one per block), with no per-block adjustment."""
    scores = _scores(gammas)
    keep = global_keep_mask(scores, num_to_remove(ratio, scores.numel()))
    return list(keep.split([len(g) for g in gammas]))


@dataclass
class ChannelSelection:
    keep: list  # one bool tensor per block: True = channel kept
    forced: int  # channels kept only because their block would otherwise be empty

    @property
    def widths(self):
        return [int(m.sum()) for m in self.keep]

    @property
    def kept(self):
        return sum(self.widths)

    @property
    def total(self):
        return sum(len(m) for m in self.keep)

    def indices(self):
        return [torch.nonzero(m).flatten() for m in self.keep]


def channel_chosen_by_score(gammas, selection):
    """`chosen_by_score` (utils.pruning.ScoreChoice) of a channel selection: the share of removed
    channels whose |score| is strictly below the lowest kept one (a channel kept only so that its
    block is not empty lowers that cut). No block is ever emptied, so no layer collapses."""
    return ScoreChoice().add({i: g.detach().abs() for i, g in enumerate(gammas)},
                             {i: k.float() for i, k in enumerate(selection.keep)}).share


def select_channels(gammas, ratio):
    """Channels a compact network keeps: the global threshold, then ≥ 1 channel per block.

    A block the threshold empties keeps its largest-|γ| channel; for each such channel the
    lowest-|γ| channel kept elsewhere (in a block that keeps two or more) is removed instead,
    i.e. the threshold rises just enough, so exactly round(ratio·C) channels still go. Only when
    fewer channels than blocks would survive (ratio close to 1) is that impossible: then every
    block keeps exactly one channel and fewer than round(ratio·C) go (`kept` tells).
    """
    sizes = [len(g) for g in gammas]
    scores = _scores(gammas)
    total = scores.numel()
    order = torch.argsort(scores, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(total)
    block_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    keep = torch.cat(threshold_masks(gammas, ratio))  # the plain threshold, then the adjustment

    counts = torch.bincount(block_of[keep], minlength=len(sizes))
    forced = set()
    for b in torch.nonzero(counts == 0).flatten().tolist():
        members = torch.nonzero(block_of == b).flatten()
        best = int(members[torch.argmax(rank[members])])  # its highest-ranked channel
        keep[best] = True
        counts[b] = 1
        forced.add(best)
    owed = len(forced)
    for i in order.tolist():  # give the forced channels back, lowest |γ| first
        if owed == 0:
            break
        if keep[i] and i not in forced and counts[block_of[i]] > 1:
            keep[i] = False
            counts[block_of[i]] -= 1
            owed -= 1
    return ChannelSelection(list(keep.split(sizes)), len(forced))


def _block_prefixes(model):
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(b)] for b in model.blocks()]


def arch_of(model):
    return f"resnet{model.depth}"


@torch.no_grad()
def compact_model(model, keep):
    """A new, physically smaller ResNet holding the kept channels' weights of `model`.

    `keep`: one bool mask per block over its current inner channels. Copied: conv1's output
    rows, bn1's weight/bias/running stats, conv2's input columns; everything else whole.
    Returned on `model`'s device, in eval mode.
    """
    device = next(model.parameters()).device
    index = [torch.nonzero(m.cpu()).flatten() for m in keep]
    new = get_model(arch_of(model), shortcut=model.shortcut_type, widths=[len(i) for i in index])
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for prefix, idx in zip(_block_prefixes(model), index):
        state[f"{prefix}.conv1.weight"] = state[f"{prefix}.conv1.weight"][idx]
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.bn1.{leaf}"] = state[f"{prefix}.bn1.{leaf}"][idx]
        state[f"{prefix}.conv2.weight"] = state[f"{prefix}.conv2.weight"][:, idx]
    new.load_state_dict(state)  # strict: any shape the surgery got wrong fails here
    return new.to(device).eval()


@torch.no_grad()
def count_flops(model, image_size=32):
    """Forward FLOPs of one image, counted by torch.utils.flop_counter (convolutions and
    matrix products, 2 FLOPs per multiply-add; BatchNorm, ReLU and additions are not counted)."""
    net = copy.deepcopy(model).cpu().eval()
    counter = FlopCounterMode(display=False)
    with counter:
        net(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


@torch.no_grad()
def layer_flops(model, image_size=32):
    """Forward FLOPs of one image per prunable weight ({'layer1.0.conv1.weight': FLOPs}), counted
    as `count_flops` counts them (their sum is `count_flops(model)` for a network whose FLOPs are
    all in Conv2d and Linear layers, as every model here)."""
    net = copy.deepcopy(model).cpu().eval()
    counter = FlopCounterMode(display=False)
    with counter:
        net(torch.zeros(1, 3, image_size, image_size))
    counts = counter.get_flop_counts()
    root = type(net).__name__
    return {f"{name}.weight": int(sum(counts.get(f"{root}.{name}", {}).values()))
            for name, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


@torch.inference_mode()
def forward_seconds(models, x, repeats=10, warmup=2):
    """Fastest of `repeats` timed forward passes of `x` through each model, in seconds.

    The models take turns within every repeat, so drift in the machine's speed (clock boost,
    other load) hits them all alike; the minimum, not the mean, because interference from
    other processes only ever adds time.
    """
    device = x.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = [[] for _ in models]
    for m in models:
        m.eval()
    for r in range(warmup + repeats):
        for i, m in enumerate(models):
            sync()
            t0 = time.perf_counter()
            with autocast(device):
                m(x)
            sync()
            if r >= warmup:
                times[i].append(time.perf_counter() - t0)
    return [min(t) for t in times]
