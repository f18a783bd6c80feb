"""EarlyCroP's table: the rows of its own runs and of the other scripts' runs, measured alike.

Every row is measured here from its `final.pt` on one device: `batch_ms` (the fastest of a few
training steps: forward, backward, SGD step, mask re-applied), `peak_mem_mb` (CUDA only: the
peak memory those steps allocate beyond what was allocated before the model was moved there),
`disk_mb` (bytes of torch.save of the state_dict, 10⁶ bytes per MB: the compact network as it
is; an unstructured network with every masked tensor stored as `to_sparse_csr` of its
(out, in·k·k) matrix). `params` counts the parameters a network holds minus its masked zeros;
`flops` are forward FLOPs per image of the network as stored (masked zeros are still
multiplied by dense kernels, so unstructured pruning does not lower them).
"""
import io
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from models import count_params, get_model, model_from_checkpoint, prunable_weights, read_checkpoint
from utils.channels import count_flops
from utils.crop import authors_prune_epoch, detect_prune_epoch, milestone_before
from utils.early_bird import training_flops
from utils.experiment import pct_name
from utils.io import load_csv, load_json
from utils.train import MaskedParams, autocast

SUMMARY_COLUMNS = ["method", "structured", "sparsity", "test_acc", "weight_sparsity", "node_sparsity",
                   "prune_epoch", "train_seconds", "batch_ms", "peak_mem_mb", "disk_mb", "params", "flops",
                   "source", "train_flops", "train_flops_ratio", "collapsed_layers", "chosen_by_score"]
# Columns measured on this device (a rerun on the same device reuses them)
MEASURED = ["weight_sparsity", "node_sparsity", "batch_ms", "peak_mem_mb", "disk_mb", "params", "flops"]
METHODS = ("crop_u", "crop_s", "earlycrop_u", "earlycrop_s", "random_s")
STRUCTURED = {"crop_s", "earlycrop_s", "random_s", "early_bird"}
AT_INIT = {"crop_u", "crop_s", "random_s"}


def full_prunable(arch, shortcut):
    net = get_model(arch, shortcut=shortcut)
    return sum(w.numel() for w in prunable_weights(net).values()), sum(b.conv1.out_channels for b in net.blocks())


def sparsities_of(ckpt, n_full, channels_full):
    """(weight_sparsity, node_sparsity or None), recounted from a checkpoint's tensors."""
    model = model_from_checkpoint(ckpt)
    weights = prunable_weights(model)
    mask = ckpt.get("mask")
    if mask:
        zeros = sum(int((mask[n] == 0).sum()) for n in mask)
        alive = sum(w.numel() for w in weights.values()) - zeros
    else:
        alive = sum(w.numel() for w in weights.values())
    weight_sparsity = 1 - alive / n_full
    widths = ckpt.get("widths")
    node_sparsity = None if widths is None else 1 - sum(widths) / channels_full
    return weight_sparsity, node_sparsity


def disk_bytes(ckpt):
    """torch.save size of the network's tensors; masked ones as CSR of their 2-D matrix."""
    state = dict(ckpt["model"])
    for n, m in (ckpt.get("mask") or {}).items():
        w = state[n] * m.to(state[n].dtype)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": storage only here
            warnings.simplefilter("ignore", UserWarning)
            state[n] = w.reshape(w.shape[0], -1).to_sparse_csr()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def time_training_steps(model, mask, batch_size, device, steps=5):
    """(fastest step in ms, CUDA peak memory in MB or None) of SGD steps on random images."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    model = model.to(device, memory_format=torch.channels_last).train()
    x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    masked = MaskedParams(model, mask or {})
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for _ in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        with autocast(device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        masked.apply()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 1e6 if cuda else None
    return 1e3 * min(times[1:]), peak  # the first step warms up


def measure(ckpt, batch_size, device, n_full, channels_full, steps=5):
    """The measured columns of one row, from its final checkpoint."""
    model = model_from_checkpoint(ckpt)
    mask = ckpt.get("mask")
    zeros = sum(int((m == 0).sum()) for m in mask.values()) if mask else 0
    w_sp, n_sp = sparsities_of(ckpt, n_full, channels_full)
    flops = count_flops(model)
    batch_ms, peak = time_training_steps(model, mask, batch_size, device, steps)
    return {"weight_sparsity": w_sp, "node_sparsity": n_sp, "params": count_params(model) - zeros,
            "flops": flops, "batch_ms": batch_ms, "peak_mem_mb": peak, "disk_mb": disk_bytes(ckpt) / 1e6}


DETECTORS = ("authors", "paper")


def detection_record(detector, sparsities, threshold, prune_by, delta, distances, milestones, override):
    """detection.json: both rules' series and, per sparsity, threshold, prune epoch, `fired` and
    the learning-rate milestone the prune epoch follows (`after_milestone`, or None);
    `sparsities` repeats the entries of the rule that chose (`detector`).

    delta: the dense run's Δ_t = ‖θ_t − θ₀‖² per epoch (the paper rule's input); distances:
    [(‖θ_t − θ_1‖₂, ‖θ_1‖₂)] per epoch (the authors' rule's input), or None where not computed.
    threshold: None = 1 − sparsity (the ratio's threshold, or the factor on d_2).
    """
    def entry(threshold, epoch, fired, **more):
        return {"threshold": threshold, "prune_epoch": epoch, "fired": fired,
                "after_milestone": milestone_before(epoch, milestones), **more}

    paper = {"series": "ratio_t = |Δ_t − Δ_{t−1}| / Δ_1, Δ_t = ‖θ_t − θ_0‖² over Conv/Linear weights",
             "sparsities": {}}
    for s in sparsities:
        ratio, epoch, fired = detect_prune_epoch(delta, threshold or 1 - s, prune_by)
        paper["ratio"] = ratio
        paper["sparsities"][f"{s:g}"] = entry(threshold or 1 - s, epoch, fired)
    authors = {"series": "change_t = |d_t − d_{t−1}|, d_t = ‖θ_t − θ_1‖₂ / ‖θ_1‖₂ over all parameters; "
                         "τ = factor · d_2", "sparsities": {}}
    if distances is None:
        authors["missing"] = ("the dense run's trajectory has no distance_from_epoch1 column; "
                              "python earlycrop.py --detector authors replays it to compute them")
    else:
        authors["norm_epoch1"] = distances[1][1]
        for s in sparsities:
            rule = authors_prune_epoch(distances, threshold or 1 - s, prune_by)
            authors["d"], authors["change"] = rule["d"], rule["change"]
            authors["sparsities"][f"{s:g}"] = entry(rule["threshold"], rule["prune_epoch"], rule["fired"],
                                                    factor=threshold or 1 - s)
    rules = {"authors": authors, "paper": paper}
    return {"detector": detector, "milestones": list(milestones), "prune_by": prune_by,
            "prune_epoch_override": override, "delta": delta, "ratio": paper.get("ratio"),
            "d": authors.get("d"), "change": authors.get("change"),
            "sparsities": rules[detector]["sparsities"], "rules": rules}


def train_flops_of(row, dense_epochs_before, epochs_after, images, dense_flops, dense_epochs):
    """The row with train_flops (dense epochs before pruning at the dense network's FLOPs, the
    epochs after at the row's own, as Early-Bird counts them) and its ratio to the dense run's
    whole training."""
    if not isinstance(row.get("flops"), (int, float)):
        return row
    flops = (training_flops(dense_epochs_before, images, dense_flops)
             + training_flops(epochs_after, images, row["flops"]))
    return dict(row, train_flops=flops, train_flops_ratio=flops / training_flops(dense_epochs, images, dense_flops))


def trained_seconds(results_dir, summary):
    """Seconds of a run's epochs 1…E (training and each epoch's evaluation), as the dense row
    counts them: its epoch-0 evaluation left out. From trajectory.csv, else the summary."""
    path = Path(results_dir) / "trajectory.csv"
    if path.is_file():
        return sum(float(r["seconds"]) for r in load_csv(path) if int(float(r["epoch"])) > 0)
    return summary["seconds"]


def dense_seconds_until(dense_rows, epoch):
    """Seconds the dense run spent on its epochs 1..epoch (from its trajectory)."""
    return sum(float(r["seconds"]) for r in dense_rows if 0 < int(float(r["epoch"])) <= epoch)


def _load_summary(path):
    """Another script's JSON output, or None while that script has not run (damaged: exit 2)."""
    return load_json(path) if Path(path).is_file() else None


def _score_seconds(res, name, sparsity):
    """prune_at_init.py's scoring time for (method, original, sparsity), 0 where it kept none."""
    path = res / "prune_at_init" / "summary.csv"
    rows = load_csv(path) if path.is_file() else []
    hit = next((r for r in rows if r.get("method") == name and r.get("ablation") == "original"
                and abs(float(r["sparsity"]) - sparsity) < 1e-9 and r.get("score_seconds") not in (None, "")), None)
    return float(hit["score_seconds"]) if hit else 0.0


def other_rows(sparsity, checkpoint_dir, results_dir, dense_run, dense_rows):
    """Rows of the other scripts at this sparsity: [(row dict, final.pt path)] for the ones that
    exist, and [(method, command)] for the ones that do not. Each row's `epochs` holds (dense
    epochs before pruning, epochs trained after it) for its training FLOPs."""
    ck, res = Path(checkpoint_dir), Path(results_dir)
    sub = pct_name(sparsity, "sparsity")
    dense_epochs = max(int(float(r["epoch"])) for r in dense_rows)
    found, missing = [], []
    for method, name in (("random_u", "random"), ("snip", "snip"), ("grasp", "grasp")):
        s = res / "prune_at_init" / name / "original" / sub / "summary.json"
        f = ck / "prune_at_init" / name / "original" / sub / "final.pt"
        summary = _load_summary(s) if s.is_file() and f.is_file() else None
        if summary:
            found.append(({"method": method, "structured": False, "sparsity": sparsity,
                           "test_acc": summary["test_acc"], "prune_epoch": 0,
                           "train_seconds": _score_seconds(res, name, sparsity) + trained_seconds(s.parent, summary),
                           "epochs": (0, summary["epochs"]), "source": str(s)}, f))
        else:
            missing.append((method, f"python prune_at_init.py --methods {name} --sparsities {sparsity:g}"))
    # Early-Bird: the ticket at its detected epoch for the ratio equal to this sparsity
    detection = _load_summary(res / "early_bird" / "detection.json") or {}
    eb_epoch = ((detection.get("ratios") or {}).get(f"{sparsity:g}") or {}).get("eb_epoch")
    eb_row = None
    if eb_epoch is not None:
        folder = Path(f"epoch_{eb_epoch:03d}") / pct_name(sparsity, "ratio")
        s, f = res / "early_bird" / folder / "summary.json", ck / "early_bird" / folder / "final.pt"
        summary = _load_summary(s) if s.is_file() and f.is_file() else None
        if summary:
            eb_row = ({"method": "early_bird", "structured": True, "sparsity": sparsity,
                       "test_acc": summary["test_acc"], "prune_epoch": eb_epoch,
                       "train_seconds": dense_seconds_until(dense_rows, eb_epoch) + trained_seconds(s.parent, summary),
                       "epochs": (eb_epoch, summary["epochs"]), "source": str(s)}, f)
    if eb_row:
        found.append(eb_row)
    else:
        missing.append(("early_bird", f"python early_bird.py --ticket-epochs auto --ratios {sparsity:g}"))
    # LTR: IMP, with late rewinding preferred; its cost is the dense run plus every round up to s
    ltr = None
    for run in sorted(res.glob("lottery_rewind_*")) + [res / "lottery"]:
        s, f = run / "imp" / sub / "summary.json", ck / run.name / "imp" / sub / "final.pt"
        summary = _load_summary(s) if s.is_file() and f.is_file() else None
        if summary:
            rounds = [(p.parent, _load_summary(p) or {}) for p in (run / "imp").glob("sparsity_*/summary.json")
                      if float(p.parent.name.split("_", 1)[1]) / 100 <= sparsity + 1e-9]
            seconds = (sum(trained_seconds(d, r) for d, r in rounds if "seconds" in r)
                       + dense_seconds_until(dense_rows, 10 ** 9))
            # masked networks compute at the dense network's FLOPs
            epochs = dense_epochs + sum(r.get("epochs", 0) for _, r in rounds)
            ltr = ({"method": "ltr", "structured": False, "sparsity": sparsity, "test_acc": summary["test_acc"],
                    "prune_epoch": None, "train_seconds": seconds, "epochs": (epochs, 0), "source": str(s)}, f)
            break
    if ltr:
        found.append(ltr)
    else:
        missing.append(("ltr", f"python lottery_imp.py --mode imp --sparsities {sparsity:g} "
                               f"--rewind {Path(dense_run) / 'epoch_010.pt'}"))
    return found, missing


def own_row(method, s, epoch, ck_dir, res_dir, dense_rows):
    """One of this script's rows (all but the measured columns), from summary.json and final.pt:
    its cost is the dense epochs before pruning, the scoring, and its own epochs 1…E."""
    summary = load_json(res_dir / "summary.json")
    final = read_checkpoint(ck_dir / "final.pt", hint=f"python earlycrop.py --methods {method} --force")
    row = {"method": method, "structured": method in STRUCTURED, "sparsity": s,
           "test_acc": summary["test_acc"], "prune_epoch": epoch,
           "train_seconds": dense_seconds_until(dense_rows, epoch) + final.get("score_seconds", 0.0)
           + trained_seconds(res_dir, summary), "epochs": (epoch, summary["epochs"]),
           "source": str(res_dir / "summary.json"),
           "collapsed_layers": ";".join(summary.get("collapsed_layers") or []),
           "chosen_by_score": summary.get("chosen_by_score")}
    return row
