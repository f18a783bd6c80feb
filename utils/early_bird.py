"""Early-Bird detection (You et al., ICLR 2020) from the dense run's BatchNorm history.

At every epoch e and pruning ratio r, the channel mask is the exact global threshold on |γ| of
the prunable BatchNorms (`utils.channels`) in row e of `bn_history.pt`, with no at-least-one-
channel adjustment. Two masks differ by their normalised Hamming distance (the fraction of
channels on which they disagree). As in the authors' code, the ticket has emerged at the first
epoch e whose mask is within ε of each of the window − 1 masks before it:
max_distance[e] = max over d(e, e−1) … d(e, e−window+1) < ε.

The pool of channels the masks are drawn over: `inner` (default), the blocks' bn1 channels the
pruning removes; `all`, every BatchNorm channel of the network, as the authors' code thresholds
(784 in a ResNet-20 with B shortcuts, against 336 inner ones). The pruning itself always works
on the inner channels.

The authors' retraining (`--retrain-schedule remaining`): the ticket trains only the rest of the
dense schedule, epochs e+1 … E at the learning rates the dense run had there
(`remaining_recipe`), its trajectory rows numbered e … E (`EpochOffset`).
"""
import dataclasses
from pathlib import Path

import torch

from utils.channels import global_keep_mask, num_to_remove, prunable_bn_names
from utils.errors import UserError
from utils.experiment import pct_name
from utils.io import load_torch, save_csv, save_json
from utils.train import Callback

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward ≈ 3 forward passes (backward: grads of inputs and weights)


def load_bn_history(path, hint="python train_dense.py"):
    """bn_history.pt as a dict name -> (epochs+1, C) float tensor, checked; UserError if not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found (the γ history the Early-Bird detector reads); "
                        f"make it with: {hint}")
    history = load_torch(path, f"make it again with: {hint} --force", kind=None)
    if not isinstance(history, dict) or not all(
            isinstance(v, torch.Tensor) and v.dim() == 2 for v in history.values()):
        raise UserError(f"{path} is not a BatchNorm history (name -> epochs x channels); "
                        f"make it with: {hint}")
    names = prunable_bn_names(history)
    if not names:
        raise UserError(f"{path} holds no residual-block BatchNorms (layerS.I.bn1); "
                        f"make it with: {hint}")
    if len({history[n].shape[0] for n in names}) != 1:
        raise UserError(f"{path} has BatchNorms with different numbers of epochs; "
                        f"make it again with: {hint} --force")
    return history


def epoch_masks(history, names, ratio):
    """(epochs+1, C) bool: row e = the exact global-threshold keep mask at epoch e."""
    scores = torch.cat([history[n].double().abs() for n in names], dim=1)
    return global_keep_mask(scores, num_to_remove(ratio, scores.shape[1]))


def distance_matrix(masks):
    """(E, E) normalised Hamming distances between every pair of rows of a bool mask matrix."""
    m = masks.double()
    agree_on = m @ m.T  # channels kept by both; float64 holds these integer counts exactly
    kept = m.sum(1)
    return (kept[:, None] + kept[None, :] - 2 * agree_on) / masks.shape[1]


def max_distances(dist, window):
    """max_distance[e] over the window − 1 previous epochs; None while e < window − 1."""
    out = []
    for e in range(dist.shape[0]):
        if e < window - 1:
            out.append(None)
        else:
            out.append(float(dist[e, e - window + 1:e].max()))
    return out


def first_below(values, eps):
    return next((e for e, v in enumerate(values) if v is not None and v < eps), None)


def check_detector(eps, window):
    if window < 2:
        raise UserError(f"--eb-window must be >= 2 (the newest mask and at least one before it), got {window}")
    if not eps > 0:
        raise UserError(f"--eb-eps must be > 0, got {eps}")


POOLS = ("inner", "all")


def pool_names(history, pool):
    """The BatchNorms whose |γ| the detector thresholds: the blocks' bn1 (`inner`) or every
    BatchNorm of the history, in network order (`all`, the authors' code)."""
    if pool not in POOLS:
        raise UserError(f"--detector-pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return prunable_bn_names(history) if pool == "inner" else list(history)


def detect(history, ratios, eps=0.1, window=5, pool="inner"):
    """The detection.json dict and, per ratio, the full distance matrix (a tensor)."""
    check_detector(eps, window)
    names = pool_names(history, pool)
    result = {"eps": eps, "window": window, "prunable_bns": prunable_bn_names(history), "pool": pool,
              "pool_bns": names, "pool_channels": sum(history[n].shape[1] for n in names), "ratios": {}}
    matrices = {}
    for r in ratios:
        dist = distance_matrix(epoch_masks(history, names, r))
        md = max_distances(dist, window)
        result["ratios"][f"{r:g}"] = {"eb_epoch": first_below(md, eps), "max_distance": md}
        matrices[r] = dist
    return result, matrices


def write_detection(result, matrices, out_dir):
    """detection.json plus mask_distance_ratio_<r>.csv (epoch x epoch) per ratio."""
    out_dir = Path(out_dir)
    save_json(result, out_dir / "detection.json")
    paths = []
    for r, dist in matrices.items():
        epochs = [str(e) for e in range(dist.shape[0])]
        rows = [{"epoch": i, **dict(zip(epochs, map(float, dist[i].tolist())))} for i in range(dist.shape[0])]
        path = out_dir / f"{pct_name(r, 'mask_distance_ratio')}.csv"
        save_csv(rows, path, ["epoch"] + epochs)
        paths.append(path)
    return paths


# The dense run a ticket is drawn from: its checkpoints, the command that makes them, its cost.

def dense_hint(dense_run):
    """The train_dense.py command that makes (or finishes) the dense run at `dense_run`."""
    run = Path(dense_run)
    cmd = "python train_dense.py"
    if run.parent != Path("checkpoints"):
        cmd += f" --checkpoint-dir {run.parent}"
    if run.name != "dense":
        cmd += f" --run-name {run.name}"
    return cmd


def parse_ticket_epochs(values):
    """Ints >= 0, or None for 'auto'."""
    if [v.lower() for v in values] == ["auto"]:
        return None
    try:
        epochs = sorted({int(v) for v in values})
    except ValueError:
        raise UserError(f"--ticket-epochs takes epoch numbers or the single word auto, got {values}") from None
    if epochs[0] < 0:
        raise UserError(f"--ticket-epochs must be >= 0, got {values}")
    return epochs


def dense_checkpoint(dense_run, epoch):
    return Path(dense_run) / ("init.pt" if epoch == 0 else f"epoch_{epoch:03d}.pt")


def check_dense_checkpoints(dense_run, epochs, final_epoch, hint):
    """Every checkpoint a ticket needs, checked before any work starts."""
    if not dense_checkpoint(dense_run, final_epoch).is_file():
        raise UserError(f"dense run {dense_run} is unfinished (no {dense_checkpoint(dense_run, final_epoch).name}); "
                        f"finish it with: {hint}")
    late = [e for e in epochs if e > final_epoch]
    if late:
        raise UserError(f"--ticket-epochs {late} lie beyond the dense run's {final_epoch} epochs")
    missing = [e for e in epochs if not dense_checkpoint(dense_run, e).is_file()]
    if missing:
        keep = " ".join(map(str, sorted(set(epochs) | {final_epoch})))
        raise UserError(f"dense run {dense_run} saved no checkpoint at epoch(s) {missing}; retrain it "
                        f"saving them: {hint} --save-epochs {keep} --force")


def training_flops(epochs, images, forward_flops):
    return epochs * images * TRAIN_FLOPS_PER_FORWARD * forward_flops


SCHEDULES = ("full", "remaining")


def remaining_recipe(hp, dense_config, epoch):
    """The recipe for epochs epoch+1 … E of the dense run: its lr and milestones shifted by
    `epoch` (a milestone already passed counts from the start), E − epoch epochs; the other
    settings (batch size, momentum, weight decay, precision) stay `hp`'s."""
    final = int(dense_config["epochs"])
    if not 0 <= epoch < final:
        raise UserError(f"--retrain-schedule remaining: ticket epoch {epoch} leaves no epochs of the dense "
                        f"run's {final} to train; pass ticket epochs below {final}")
    milestones = tuple(max(int(m) - epoch, 0) for m in dense_config.get("milestones", hp.milestones))
    return dataclasses.replace(hp, epochs=final - epoch, lr=float(dense_config.get("lr", hp.lr)),
                               milestones=milestones)


class EpochOffset(Callback):
    """Trajectory rows numbered from `offset` (row k of the run is epoch offset + k of the
    schedule it continues)."""

    def __init__(self, offset):
        self.offset = offset

    def columns(self, run):
        return {"epoch": run.epoch + self.offset}
