"""The one training loop every script uses: SGD + multi-step schedule, masks, BN-L1, resume.

A run lives in two folders: `ckpt_dir` (named checkpoints, `resume.pt` while unfinished) and
`results_dir` (`trajectory.csv`, rewritten every epoch, and `summary.json`, written last: a run
with a summary is finished and is skipped unless `force`). `resume.pt` holds the model, the
optimizer, every generator and the rows so far, so a killed run started again with the same
command ends with the same weights and the same CSV (bar the wall-clock `seconds`).

Speed: batches come from device tensors, metrics are accumulated on the device and read once
per epoch, bf16 autocast on CUDA with fp32 master weights, channels_last.
"""
import contextlib
import functools
import hashlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import count_params, prunable_weights
from utils.errors import UserError
from utils.io import load_json, save_csv, save_json, save_torch

TRAJECTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
# Settings that may change between the start and the resume of a run without changing its result.
RUN_ONLY_KEYS = {"force", "device", "data_dir", "no_download", "checkpoint_dir", "results_dir", "jobs"}


def select_device(name="auto"):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu "
                        "or install the CUDA build: pip install -r requirements.txt")
    device = torch.device(name)
    if device.type == "cuda":  # same seed, same device -> same numbers
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


def derive_seed(seed, stream):
    """An independent 63-bit seed per stream ("init", "order", "augment", ...) of one run seed."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def cpu_generator(seed, stream):
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def seeded(fn, seed, stream="init"):
    """Call fn() (e.g. a model constructor) with the global RNG seeded for `stream`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stream))
        return fn()


PRECISIONS = ("auto", "fp32", "bf16")
_precision = "auto"  # set once per process from --precision by utils.experiment.task_setup


def set_precision(name):
    global _precision
    if name not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    _precision = name


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """AVX512-BF16 or AMX: bf16 matrix maths runs in hardware (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(device):
    """bf16 autocast: on CUDA, and on CPUs with native bf16, unless --precision says otherwise."""
    if _precision != "auto":
        return _precision == "bf16"
    return torch.device(device).type == "cuda" or cpu_has_native_bf16()


def autocast(device):
    """bf16 autocast (fp32 master weights, fp32 loss) where `uses_bf16`, else plain fp32."""
    device = torch.device(device)
    if uses_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, split, batch_size=1000):
    """(mean loss, accuracy %) of `model` in eval mode over a whole split; one host sync."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.device)
    correct = torch.zeros((), device=split.device, dtype=torch.long)
    for x, y in split.batches(batch_size):
        with autocast(split.device):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    loss, correct = torch.stack([loss_sum, correct.double()]).tolist()
    return loss / len(split), 100.0 * correct / len(split)


class MaskedParams:
    """Parameters paired with 0/1 masks; `apply()` zeroes pruned entries with one foreach op."""

    def __init__(self, model, mask):
        params = dict(model.named_parameters())
        unknown = sorted(set(mask) - set(params))
        if unknown:
            raise UserError(f"mask names parameters the model does not have: {unknown[:3]}")
        self.params = [params[n] for n in mask]
        self.masks = [mask[n].to(device=params[n].device, dtype=params[n].dtype) for n in mask]

    @torch.no_grad()
    def apply(self):
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


def bn_weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def squared_distance(model, reference):
    """‖θ − θ_ref‖² over the prunable weights named in `reference`."""
    current = prunable_weights(model)
    with torch.no_grad():
        diffs = torch._foreach_sub([current[n] for n in reference], list(reference.values()))
        return torch.stack(torch._foreach_norm(diffs)).double().square().sum()


def checkpoint(model, arch, epoch, config, **extra):
    """The contract's checkpoint dict (CPU tensors, so it loads anywhere)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {"model": state, "arch": arch, "epoch": epoch, "config": config}
    ckpt.update({k: v for k, v in extra.items() if v is not None})
    return ckpt


def train_epoch(model, optimizer, train, batch_size, order_gen, aug_gen, masked=None, bn_l1=0.0,
                perturb=None, max_steps=None):
    """One pass over `train` (or `max_steps` batches); returns the summed loss and the number
    correct as device tensors, so the caller decides when to sync (once per epoch)."""
    device = next(model.parameters()).device
    bn_list = list(bn_weights(model).values())
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for step, (x, y) in enumerate(train.batches(batch_size, order_gen, aug_gen)):
        if step == max_steps:
            break
        if perturb is not None:
            x = perturb(model, x, y)
        with autocast(device):
            out = model(x)
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if bn_l1:  # network slimming: d/dγ of λ·|γ|
            torch._foreach_add_([w.grad for w in bn_list], torch._foreach_sign(bn_list), alpha=bn_l1)
        optimizer.step()
        if masked is not None:
            masked.apply()  # pruned weights stay exactly zero, momentum and decay notwithstanding
        loss_sum += loss.detach().float() * len(y)
        correct += (out.argmax(1) == y).sum()
    return loss_sum, correct


def make_optimizer(model, hp):
    return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum,
                           weight_decay=hp.weight_decay)


def _run_identity(config):
    return {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}


def check_same_run(saved_config, config, what, folder):
    a, b = _run_identity(saved_config), _run_identity(config)
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise UserError(f"{what} in {folder} was made with other settings ({', '.join(diff)}); "
                        "rerun with the same flags, or add --force to start it over")


def finished_summary(results_dir, config, force=False):
    """The summary of a finished run with this config, or None if it must (re)run."""
    path = Path(results_dir) / "summary.json"
    if force or not path.is_file():
        return None
    summary = load_json(path)
    check_same_run(summary.get("config", {}), config, "the finished run", results_dir)
    return summary


def train_run(model, train, test, hp, *, arch, config, ckpt_dir, results_dir, seed=0,
              force=False, save_as=(), mask=None, bn_l1=0.0, checkpoint_extra=None,
              weight_distance_ref=None, bn_history=False, perturb=None, extra_metrics=None,
              desc="train", optimizer=None):
    """Train `model` with the recipe `hp` (a TrainConfig) and log everything; return the summary.

    save_as: (epoch, filename) pairs, e.g. (0, "init.pt"), (160, "epoch_160.pt").
    mask: parameter name -> 0/1 tensor, applied before epoch 0 and after every optimizer step.
    bn_l1: network-slimming L1 penalty λ·sign(γ) added to every BatchNorm weight's gradient.
    weight_distance_ref: name -> weight; adds the column `weight_distance` = ‖θ_e − ref‖².
    bn_history: write `ckpt_dir/bn_history.pt` (BN name -> (epochs+1, C) γ per epoch).
    perturb: callable(model, x, y) -> x used on every training batch (adversarial training);
      its state_dict()/load_state_dict(), if any, are saved for resume.
    extra_metrics: callable(model) -> dict of extra trajectory columns, once per row.
    optimizer: callable(model, hp) -> torch.optim.Optimizer (default: SGD from `make_optimizer`);
      its state is saved in resume.pt like SGD's.
    """
    ckpt_dir, results_dir = Path(ckpt_dir), Path(results_dir)
    done = finished_summary(results_dir, config, force)
    if done is not None:
        tqdm.write(f"{desc}: finished already ({results_dir}/summary.json); --force redoes it", file=sys.stderr)
        return done
    hp.validate()
    device = next(model.parameters()).device
    resume_path = ckpt_dir / "resume.pt"
    if force:
        resume_path.unlink(missing_ok=True)
    model.to(memory_format=torch.channels_last)
    optimizer = (optimizer or make_optimizer)(model, hp)
    masked = MaskedParams(model, mask or {})
    bns = bn_weights(model)
    names = {}
    for epoch, name in save_as:
        names.setdefault(epoch, []).append(name)
    extra = dict(checkpoint_extra or {}, mask=mask)
    order_gen, aug_gen = cpu_generator(seed, "order"), cpu_generator(seed, "augment")

    def row_metrics(epoch, lr, seconds_start, train_metrics=None):
        if train_metrics is None:  # epoch 0: the starting weights on the un-augmented train set
            train_metrics = evaluate(model, train)
        test_loss, test_acc = evaluate(model, test)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_metrics[0], "train_acc": train_metrics[1],
               "test_loss": test_loss, "test_acc": test_acc}
        if weight_distance_ref is not None:
            row["weight_distance"] = squared_distance(model, weight_distance_ref).item()
        if extra_metrics is not None:
            row.update(extra_metrics(model))
        row["seconds"] = time.perf_counter() - seconds_start
        return row

    if resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        check_same_run(state["config"], config, "the interrupted run", ckpt_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        order_gen.set_state(state["order_gen"].cpu())  # map_location moved it; generators are CPU
        aug_gen.set_state(state["aug_gen"].cpu())
        if perturb is not None and hasattr(perturb, "load_state_dict"):
            perturb.load_state_dict(state["perturb"])
        rows, history, start_epoch = state["rows"], state["bn_history"], state["epoch"]
        tqdm.write(f"{desc}: resuming after epoch {start_epoch} from {resume_path}", file=sys.stderr)
    else:
        masked.apply()
        t0 = time.perf_counter()
        rows = [row_metrics(0, 0.0, t0)]
        history = {n: [w.detach().float().cpu().clone()] for n, w in bns.items()} if bn_history else {}
        start_epoch = 0
        for name in names.get(0, []):
            save_torch(checkpoint(model, arch, 0, config, **extra), ckpt_dir / name)
        if bn_history:
            save_torch({n: torch.stack(h) for n, h in history.items()}, ckpt_dir / "bn_history.pt")

    columns = TRAJECTORY_COLUMNS[:-1] + [k for k in rows[0] if k not in TRAJECTORY_COLUMNS] + ["seconds"]
    save_csv(rows, results_dir / "trajectory.csv", columns)
    bar = tqdm(range(start_epoch + 1, hp.epochs + 1), desc=desc, unit="epoch", dynamic_ncols=True,
               initial=start_epoch, total=hp.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        lr = hp.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, correct = train_epoch(model, optimizer, train, hp.batch_size, order_gen, aug_gen,
                                        masked, bn_l1, perturb)
        loss_total, correct_total = torch.stack([loss_sum, correct.double()]).tolist()
        if not math.isfinite(loss_total):
            raise UserError(f"{desc}: training diverged at epoch {epoch} (loss is {loss_total}); "
                            "lower --lr and rerun with --force")
        train_metrics = (loss_total / len(train), 100.0 * correct_total / len(train))
        rows.append(row_metrics(epoch, lr, t0, train_metrics))
        if bn_history:
            for n, w in bns.items():
                history[n].append(w.detach().float().cpu().clone())
        for name in names.get(epoch, []):
            save_torch(checkpoint(model, arch, epoch, config, **extra), ckpt_dir / name)
        save_csv(rows, results_dir / "trajectory.csv", columns)
        if bn_history:
            save_torch({n: torch.stack(h) for n, h in history.items()}, ckpt_dir / "bn_history.pt")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "order_gen": order_gen.get_state(), "aug_gen": aug_gen.get_state(), "rows": rows,
                 "bn_history": history, "config": config}
        if perturb is not None and hasattr(perturb, "state_dict"):
            state["perturb"] = perturb.state_dict()
        save_torch(state, resume_path)
        bar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}", test_acc=f"{rows[-1]['test_acc']:.2f}")
    bar.close()

    summary = {"test_acc": rows[-1]["test_acc"], "test_loss": rows[-1]["test_loss"],
               "train_acc": rows[-1]["train_acc"], "start_test_acc": rows[0]["test_acc"],
               "params": count_params(model), "epochs": hp.epochs,
               "seconds": sum(r["seconds"] for r in rows), "device": str(device), "config": config}
    if mask:
        zeros = sum(int((m == 0).sum()) for m in mask.values())
        summary["sparsity"] = zeros / sum(m.numel() for m in mask.values())
    save_json(summary, results_dir / "summary.json")
    resume_path.unlink(missing_ok=True)
    return summary
