"""The three-regime phase model of pruning (Zhou et al., ICML 2023): the maths and one cell's work.

A cell is one (temperature, load) point: a dense network at some temperature (fewer training
epochs, or a smaller batch, is hotter), pruned layer by layer to a conv-weight density (the
load), then retrained as k copies that differ only in data order and augmentation. The cell is
then described by

- linear mode connectivity between every pair of copies: the training error and loss along the
  straight line θ(α) = (1−α)θ_i + αθ_j, BatchNorm statistics re-estimated at every point;
  `mc` = ½(E₀+E₁) − E(α*) with α* = argmax_α |½(E₀+E₁) − E(α)| (the authors' metric, negative
  for a barrier; deviations within a quarter of one image's error count as tied, the first point
  is taken) and `barrier` = max_α L(α) − ((1−α)L₀ + αL₁);
- linear CKA (biased HSIC, float64) between the copies' softmax outputs;

and classed as Regime I (poorly connected: mc < −mc_threshold), II-A (connected, dissimilar:
cka < cka_threshold) or II-B (connected, similar); a cell whose α* is an endpoint and |mc| exceeds
the threshold is `undecided` (there mc = ½(E₁−E₀) only says which copy is worse). Every cell's
regime is also recomputed under a grid of thresholds around the defaults (`robust`: the same
regime everywhere on it).

Every path point and every CKA output is computed in plain fp32 (no autocast, no TF32).
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import prunable_weights
from utils.config import TrainConfig
from utils.errors import UserError
from utils.io import load_json, save_csv, save_json
from utils.pruning import layerwise_magnitude_mask, weights_fingerprint
from utils.train import strict_fp32

AXES = ("epochs", "batch-size")
GRIDS = {  # axis -> grid -> (temperatures, densities, copies)
    "epochs": {"small": ([10, 30, 50, 100, 160], [0.05, 0.1, 0.2, 0.5], 2),
               "paper": (list(range(10, 161, 10)), [0.05, 0.06, 0.07, 0.08, 0.1, 0.14, 0.2, 0.4, 0.8], 3)},
    "batch-size": {"small": ([32, 128, 512], [0.05, 0.1, 0.2, 0.5], 2),
                   "paper": ([16, 32, 64, 128, 256, 512], [0.05, 0.06, 0.07, 0.08, 0.1, 0.14, 0.2, 0.4, 0.8], 3)},
}
REFERENCE_BATCH = 128  # the batch size the dense run's epochs are counted in
BN_BATCH = 64  # BatchNorm statistics are re-estimated on batches of this size (the authors' lmc.py --train-batch)
SUMMARY_COLUMNS = ["axis", "temperature", "density", "dense_acc", "pruned_acc", "pruned_acc_std",
                   "retrained_acc", "retrained_acc_std", "mc", "mc_std", "barrier", "barrier_std",
                   "cka", "cka_std", "pairs", "regime", "mc_from", "mc_endpoint_pairs", "robust",
                   "collapsed_layers", "chosen_by_score"]
LMC_COLUMNS = ["alpha", "train_loss", "train_error", "train_wrong", "train_images"]
REGIMES = ("I", "II-A", "II-B")
UNDECIDED = "undecided"
# Default thresholds: ours. The paper (Zhou et al. 2023, Figure 2) draws its regime lines by eye,
# and no single number reproduces them: inside its Regime I line mc runs from about -0.05 to
# -0.65, outside it from 0 to about -0.3; the cells it puts in II-B have CKA about 0.98-0.99, but
# II-A cells at high density reach the same values. 0.1 and 0.98 sit inside those overlaps; the
# sensitivity grid shows which cells depend on them.
MC_THRESHOLD = 0.1
CKA_THRESHOLD = 0.98
MC_GRID_FACTORS = (0.5, 1.0, 2.0)  # the sensitivity grid: mc threshold x these ...
CKA_GRID_STEPS = (-0.01, 0.0, 0.01)  # ... and cka threshold + these (clipped to [0, 1])
TIE_TOLERANCE_IMAGES = 0.25  # mc deviations closer than this many images' error are tied


# ---------------------------------------------------------------------------------------------
# The grid and its folder names

def temperature_name(axis, temperature):
    """'epoch_010' (epochs axis) or 'batch_032' (batch-size axis)."""
    return f"epoch_{temperature:03d}" if axis == "epochs" else f"batch_{temperature:03d}"


def density_name(density):
    """'density_5' for 0.05: 100·d in %g format."""
    return f"density_{100 * density:g}"


def check_grid(temperatures, densities, copies, lmc_points):
    if not temperatures or any(t < 1 for t in temperatures):
        raise UserError(f"--temperatures takes positive integers (epochs or batch sizes), got {temperatures}")
    bad = [d for d in densities if not 0 < d <= 1]
    if bad or not densities:
        raise UserError(f"--densities takes fractions in (0, 1] (0.05 = 5% of the conv weights kept), "
                        f"got {densities}")
    if copies < 2:
        raise UserError(f"--copies must be >= 2 (mode connectivity and CKA compare pairs of copies), got {copies}")
    if lmc_points < 3:
        raise UserError(f"--lmc-points must be >= 3 (the two endpoints and at least one point between), "
                        f"got {lmc_points}")


def batch_schedule(dense_epochs, batch_size):
    """(epochs, milestones) of the dense net trained at `batch_size`: as many optimizer steps as
    the dense run (round(E·B/128) epochs), the learning rate ×0.1 at 50% and 75% of them."""
    epochs = half_up(dense_epochs * batch_size / REFERENCE_BATCH)
    if epochs < 1:
        raise UserError(f"batch size {batch_size} gives round({dense_epochs}·{batch_size}/{REFERENCE_BATCH}) "
                        "= 0 epochs; use a larger batch size or a longer dense run")
    return epochs, (half_up(0.5 * epochs), half_up(0.75 * epochs))


def half_up(x):
    """Round half up (Python's round() rounds 2.5 to 2)."""
    return int(math.floor(x + 0.5))


# ---------------------------------------------------------------------------------------------
# Pruning: every conv layer to the same density, the Linear layer dense (the authors' `unif`)

def conv_weights(model):
    """Name -> weight of every Conv2d layer (the Linear classifier is left out: it stays dense)."""
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return {n: w for n, w in prunable_weights(model).items() if n in convs}


def conv_density_mask(weights, density):
    """Exactly round((1−d)·n) zeros in each conv layer of n weights, the smallest |w| first,
    ties broken by position (`utils.pruning.layerwise_magnitude_mask`)."""
    return layerwise_magnitude_mask(weights, 1.0 - density)


# ---------------------------------------------------------------------------------------------
# The linear path between two networks

@torch.no_grad()
def interpolate(model, params_a, params_b, alpha):
    """Set every parameter of `model` (BatchNorm γ and β included) to (1−α)·a + α·b.

    `params_a`/`params_b` map parameter names to tensors. At α = 0 and α = 1 the endpoints are
    copied exactly; pruned weights (zero in both) stay exactly zero in between.
    """
    for name, p in model.named_parameters():
        a, b = params_a[name], params_b[name]
        if alpha == 0:
            p.copy_(a)
        elif alpha == 1:
            p.copy_(b)
        else:
            p.copy_(a * (1 - alpha) + b * alpha)
    return model


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn(model, split, max_batches=0, batch_size=BN_BATCH):
    """Reset every BatchNorm's running statistics and re-estimate them as the exact average
    (cumulative, not momentum) of the per-batch statistics over the first `max_batches`
    un-augmented training batches of `batch_size`, in order (0 = all batches).

    PyTorch's BatchNorm with momentum=None keeps exactly this cumulative average: the mean of
    the batch means and of the unbiased batch variances, each batch weighted equally.
    """
    bns = batchnorms(model)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        with strict_fp32(split.device):
            for i, (x, _) in enumerate(split.batches(batch_size)):
                if max_batches and i >= max_batches:
                    break
                model(x)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        model.train(was_training)
    return model


@torch.no_grad()
def evaluate_fp32(model, split, batch_size=1000):
    """(mean cross-entropy, misclassified images, images) in eval mode over the un-augmented
    split, fp32: the error is kept as an exact count."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    wrong = torch.zeros((), dtype=torch.long, device=split.device)
    with strict_fp32(split.device):
        for x, y in split.batches(batch_size):
            out = model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            wrong += (out.argmax(1) != y).sum()
    model.train(was_training)
    loss, wrong = torch.stack([loss_sum, wrong.double()]).tolist()
    return loss / len(split), int(wrong), len(split)


def path_alphas(points):
    return [i / (points - 1) for i in range(points)]


def linear_path(model, params_a, params_b, train, points=11, bn_batches=0, progress=None, bn_batch_size=BN_BATCH):
    """Rows {alpha, train_loss, train_error, train_wrong, train_images} along
    θ(α) = (1−α)θ_a + αθ_b; `model` is a network of the same architecture used as scratch space
    (its weights are overwritten). `train_wrong` is the exact count of misclassified images."""
    rows = []
    for alpha in path_alphas(points):
        interpolate(model, params_a, params_b, alpha)
        reestimate_bn(model, train, bn_batches, bn_batch_size)
        loss, wrong, n = evaluate_fp32(model, train)
        rows.append({"alpha": alpha, "train_loss": loss, "train_error": wrong / n, "train_wrong": wrong,
                     "train_images": n})
        if progress is not None:
            progress()
    return rows


def mc_point(errors, n_images):
    """(mc, k*): the authors' mc = ½(E₀+E₁) − E(α_k*), α* = argmax over all points (endpoints
    included) of |½(E₀+E₁) − E(α)|, E the error fractions on `n_images` images.

    Ties: the two endpoints always deviate equally (±½(E₁−E₀)), so whether an interior point
    beats them, or which endpoint wins, must not be left to rounding. Deviations within
    TIE_TOLERANCE_IMAGES / n_images of the largest count as tied, and the first of them is taken,
    as the authors' argmax does. Counts of misclassified images deviate by multiples of half an
    image, so a quarter image separates true ties from true differences exactly."""
    errors = np.asarray(errors, dtype=np.float64)
    mid = 0.5 * (errors[0] + errors[-1])
    deviation = np.abs(mid - errors)
    tied = np.flatnonzero(deviation >= deviation.max() - TIE_TOLERANCE_IMAGES / n_images)
    star = int(tied[0])
    return float(mid - errors[star]), star


def mode_connectivity(errors, n_images):
    """mc of `mc_point`. Negative: a barrier; positive: a hump of lower error (the path is better
    than its ends)."""
    return mc_point(errors, n_images)[0]


def mc_source(star, points):
    """'endpoint' when α* is an end of the path (there mc = ±½(E₁−E₀) measures only how the two
    copies differ), else 'interior'."""
    return "endpoint" if star in (0, points - 1) else "interior"


def loss_barrier(alphas, losses):
    """max over all points (endpoints included) of L(α) − ((1−α)L₀ + αL₁); >= 0."""
    alphas, losses = np.asarray(alphas, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    chord = (1 - alphas) * losses[0] + alphas * losses[-1]
    return float(np.max(losses - chord))


# ---------------------------------------------------------------------------------------------
# Linear CKA

def linear_cka(x, y):
    """Linear CKA of two representations (n × p, n × q) with the biased HSIC, in float64:
    ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F), Xᶜ, Yᶜ column-centred (the (n−1)⁻² of the biased HSIC
    cancels). NaN when either representation is constant."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides, got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


@torch.no_grad()
def softmax_outputs(model, split, n_images, batch_size=1000):
    """Softmax outputs (float64, n × classes) of `model` in eval mode, with its own BatchNorm
    statistics, on the first `n_images` un-augmented images of `split`."""
    was_training = model.training
    model.eval()
    outs, seen = [], 0
    with strict_fp32(split.device):
        for x, _ in split.batches(batch_size):
            if seen >= n_images:
                break
            x = x[:n_images - seen]
            outs.append(F.softmax(model(x).double(), dim=1).cpu())
            seen += len(x)
    model.train(was_training)
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# Regimes

def csv_float(v):
    """The value as summary.csv stores it (6 significant digits), so that the regimes recompute
    exactly from the file."""
    return float(f"{v:.6g}")


def classify(mc, cka, mc_threshold, cka_threshold, mc_from="interior"):
    """'undecided' when α* is an endpoint (`mc_from` != 'interior') and |mc| > mc_threshold: the
    endpoint tie then hides whether an interior point deviates by more than the threshold; else
    'I' when mc < −mc_threshold; else 'II-B' when cka >= cka_threshold, else 'II-A' (an undefined
    cka is II-A)."""
    if mc_from != "interior" and abs(mc) > mc_threshold:
        return UNDECIDED
    if mc < -mc_threshold:
        return "I"
    if not math.isnan(cka) and cka >= cka_threshold:
        return "II-B"
    return "II-A"


def sensitivity_grid(mc_threshold, cka_threshold):
    """(mc thresholds, cka thresholds) around the two in force."""
    return ([round(mc_threshold * f, 6) for f in MC_GRID_FACTORS],
            [round(min(1.0, max(0.0, cka_threshold + d)), 6) for d in CKA_GRID_STEPS])


def grid_key(mc_threshold, cka_threshold):
    return f"mc {mc_threshold:g} / cka {cka_threshold:g}"


def assign_regimes(rows, mc_threshold=MC_THRESHOLD, cka_threshold=CKA_THRESHOLD):
    """Fill each summary row's `regime` (at the thresholds in force) and `robust` ('yes' when its
    regime is one of I, II-A, II-B and the same at every point of the sensitivity grid); return
    regimes.json: the thresholds, their source, the rules, the grid and every cell's regime on it."""
    mc_grid, cka_grid = sensitivity_grid(mc_threshold, cka_threshold)
    cells = []
    for r in rows:
        mc_from = r.get("mc_from") or "interior"
        cka = math.nan if r["cka"] is None else r["cka"]
        r["regime"] = classify(r["mc"], cka, mc_threshold, cka_threshold, mc_from)
        on_grid = {grid_key(m, c): classify(r["mc"], cka, m, c, mc_from) for m in mc_grid for c in cka_grid}
        robust = r["regime"] in REGIMES and set(on_grid.values()) == {r["regime"]}
        r["robust"] = "yes" if robust else "no"
        cells.append({k: r.get(k) for k in ("temperature", "density", "mc", "cka", "mc_from", "regime")}
                     | {"robust": robust, "regimes_on_grid": on_grid})
    return {"mc_threshold": mc_threshold,
            "mc_threshold_from": "--mc-threshold" if mc_threshold != MC_THRESHOLD else
            "ours (the paper draws its lines by eye; see docs/three_regime.md)",
            "cka_threshold": cka_threshold,
            "cka_threshold_from": "--cka-threshold" if cka_threshold != CKA_THRESHOLD else
            "ours (the paper draws its lines by eye; see docs/three_regime.md)",
            "regime_I": "mc < -mc_threshold", "regime_II_B": "not I and cka >= cka_threshold",
            "regime_II_A": "not I and cka < cka_threshold",
            "undecided": "alpha* is an endpoint and |mc| > mc_threshold",
            "tie_tolerance_images": TIE_TOLERANCE_IMAGES,
            "sensitivity": {"mc_thresholds": mc_grid, "cka_thresholds": cka_grid,
                            "robust": "the same regime (I, II-A or II-B) at every point of the grid"},
            "cells": cells}


def mean_std(values):
    """(mean, population standard deviation) — with one pair the spread is 0, not undefined."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def summary_row(axis, temperature, density, dense_acc, copies, pairs):
    """One summary.csv row from the copies' train_run summaries and the pairs' metrics."""
    row = {"axis": axis, "temperature": temperature, "density": density, "dense_acc": dense_acc,
           "pairs": len(pairs)}
    for column, values in (("pruned_acc", [c["start_test_acc"] for c in copies]),
                           ("retrained_acc", [c["test_acc"] for c in copies]),
                           ("mc", [p["mc"] for p in pairs]), ("barrier", [p["barrier"] for p in pairs]),
                           ("cka", [math.nan if p["cka"] is None else p["cka"] for p in pairs])):
        mean, std = mean_std(values)
        row[column], row[f"{column}_std"] = csv_float(mean), csv_float(std)
    endpoint = sum(p["mc_from"] == "endpoint" for p in pairs)
    row["mc_from"], row["mc_endpoint_pairs"] = ("endpoint" if endpoint else "interior"), endpoint
    return row


# ---------------------------------------------------------------------------------------------
# One pair's measurements, cached in the cell's results folder

def pair_key(i, j):
    return f"{i}_{j}"


def measure_pair(scratch, ckpt_i, ckpt_j, train, cell_results, i, j, *, points, bn_batches, cka_images,
                 bn_batch_size=BN_BATCH, force=False, progress=None):
    """mc, barrier and cka of copies i < j (their final checkpoints' dicts); writes
    lmc_<i>_<j>.csv and caches the three numbers in pairs.json, keyed by the two networks'
    weights and the settings, so a rerun measures only what changed."""
    cell_results = Path(cell_results)
    key = {"final_i": weights_fingerprint(ckpt_i["model"]), "final_j": weights_fingerprint(ckpt_j["model"]),
           "lmc_points": points, "bn_batches": bn_batches, "bn_batch_size": bn_batch_size,
           "cka_images": cka_images, "train_images": len(train), "mc_rule": "tie_quarter_image"}
    cache_path, csv_path = cell_results / "pairs.json", cell_results / f"lmc_{i}_{j}.csv"
    cache = load_json(cache_path) if cache_path.is_file() else {}
    hit = cache.get(pair_key(i, j))
    if not force and hit and hit.get("key") == key and csv_path.is_file():
        return hit
    device = next(scratch.parameters()).device
    params = [{n: t.to(device) for n, t in c["model"].items()} for c in (ckpt_i, ckpt_j)]
    rows = linear_path(scratch, *params, train, points, bn_batches, progress, bn_batch_size)
    # the loss at full precision (repr), the error as an exact count beside its fraction
    save_csv([r | {"train_loss": repr(r["train_loss"])} for r in rows], csv_path, LMC_COLUMNS)
    outputs = []
    for p in params:  # each copy as trained: its own weights and its own BatchNorm statistics
        scratch.load_state_dict(p)
        outputs.append(softmax_outputs(scratch, train, min(cka_images, len(train))))
    cka = linear_cka(*outputs)
    mc, star = mc_point([r["train_wrong"] / r["train_images"] for r in rows], len(train))
    result = {"mc": mc, "mc_alpha": rows[star]["alpha"], "mc_from": mc_source(star, points),
              "barrier": loss_barrier([r["alpha"] for r in rows], [r["train_loss"] for r in rows]),
              "cka": None if math.isnan(cka) else cka, "key": key}  # JSON has no NaN
    cache = load_json(cache_path) if cache_path.is_file() else {}
    cache[pair_key(i, j)] = result
    save_json(cache, cache_path)
    return result


# ---------------------------------------------------------------------------------------------
# The temperatures' dense networks and a cell's copies

def check_epoch_checkpoints(dense_run, temperatures, dense_epochs, hint):
    """Every epoch_EEE.pt the epochs axis needs, checked before any work starts."""
    late = [t for t in temperatures if t > dense_epochs]
    if late:
        keep = " ".join(map(str, sorted(set(temperatures))))
        raise UserError(f"--temperatures {late} lie beyond the dense run's {dense_epochs} epochs; pick epochs "
                        f"it saved, or train a longer one: {hint} --epochs {max(late)} --save-epochs {keep} --force")
    missing = [t for t in temperatures if not (Path(dense_run) / f"epoch_{t:03d}.pt").is_file()]
    if missing:
        keep = " ".join(map(str, sorted(set(temperatures) | {dense_epochs})))
        raise UserError(f"dense run {dense_run} saved no checkpoint at epoch(s) {missing}; retrain it "
                        f"saving them: {hint} --save-epochs {keep} --force")


def dense_hp(hp, dense_config, batch_size):
    """The recipe of the dense net at `batch_size`: lr 0.1, the dense run's momentum and weight
    decay, the same number of optimizer steps as the dense run (`batch_schedule`)."""
    epochs, milestones = batch_schedule(int(dense_config.get("epochs", hp.epochs)), batch_size)
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.1,
                       momentum=dense_config.get("momentum", hp.momentum),
                       weight_decay=dense_config.get("weight_decay", hp.weight_decay),
                       milestones=milestones, precision=hp.precision, compile=hp.compile)
