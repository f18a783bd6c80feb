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
from utils.experiment import pct_name
from utils.io import load_json
from utils.train import MaskedParams, autocast

SUMMARY_COLUMNS = ["method", "structured", "sparsity", "test_acc", "weight_sparsity", "node_sparsity",
                   "prune_epoch", "train_seconds", "batch_ms", "peak_mem_mb", "disk_mb", "params", "flops",
                   "source", "collapsed_layers", "chosen_by_score"]
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


def dense_seconds_until(dense_rows, epoch):
    """Seconds the dense run spent on its epochs 1..epoch (from its trajectory)."""
    return sum(float(r["seconds"]) for r in dense_rows if 0 < int(float(r["epoch"])) <= epoch)


def _load_summary(path):
    """Another script's JSON output, or None while that script has not run (damaged: exit 2)."""
    return load_json(path) if Path(path).is_file() else None


def other_rows(sparsity, checkpoint_dir, results_dir, dense_run, dense_rows):
    """Rows of the other scripts at this sparsity: [(row dict, final.pt path)] for the ones that
    exist, and [(method, command)] for the ones that do not."""
    ck, res = Path(checkpoint_dir), Path(results_dir)
    sub = pct_name(sparsity, "sparsity")
    found, missing = [], []
    for method, name in (("random_u", "random"), ("snip", "snip"), ("grasp", "grasp")):
        s = res / "prune_at_init" / name / "original" / sub / "summary.json"
        f = ck / "prune_at_init" / name / "original" / sub / "final.pt"
        summary = _load_summary(s) if s.is_file() and f.is_file() else None
        if summary:
            found.append(({"method": method, "structured": False, "sparsity": sparsity,
                           "test_acc": summary["test_acc"], "prune_epoch": 0,
                           "train_seconds": summary["seconds"], "source": str(s)}, f))
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
                       "train_seconds": dense_seconds_until(dense_rows, eb_epoch) + summary["seconds"],
                       "source": str(s)}, f)
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
            rounds = [_load_summary(p) or {} for p in (run / "imp").glob("sparsity_*/summary.json")
                      if float(p.parent.name.split("_", 1)[1]) / 100 <= sparsity + 1e-9]
            seconds = sum(r.get("seconds", 0) for r in rounds) + dense_seconds_until(dense_rows, 10 ** 9)
            ltr = ({"method": "ltr", "structured": False, "sparsity": sparsity, "test_acc": summary["test_acc"],
                    "prune_epoch": None, "train_seconds": seconds, "source": str(s)}, f)
            break
    if ltr:
        found.append(ltr)
    else:
        missing.append(("ltr", f"python lottery_imp.py --mode imp --sparsities {sparsity:g} "
                               f"--rewind {Path(dense_run) / 'epoch_010.pt'}"))
    return found, missing


def own_row(method, s, epoch, ck_dir, res_dir, dense_rows):
    """One of this script's rows (all but the measured columns), from summary.json and final.pt."""
    summary = load_json(res_dir / "summary.json")
    final = read_checkpoint(ck_dir / "final.pt", hint=f"python earlycrop.py --methods {method} --force")
    row = {"method": method, "structured": method in STRUCTURED, "sparsity": s,
           "test_acc": summary["test_acc"], "prune_epoch": epoch,
           "train_seconds": dense_seconds_until(dense_rows, epoch) + final.get("score_seconds", 0.0)
           + summary["seconds"], "source": str(res_dir / "summary.json"),
           "collapsed_layers": ";".join(summary.get("collapsed_layers") or []),
           "chosen_by_score": summary.get("chosen_by_score")}
    return row
