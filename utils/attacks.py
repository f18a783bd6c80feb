"""L∞ attacks on [0, 1] pixels (FGSM, PGD), robust evaluation, and PGD adversarial training.

Models normalise inside (their first op), so ε and the step are in pixel units: 8/255 means
eight grey levels. Every adversarial image x' satisfies |x' − x|∞ ≤ ε and 0 ≤ x' ≤ 1: each
iterate is clipped into [max(x − ε, 0), min(x + ε, 1)].

Mode handling:
* evaluation (`robust_evaluate`): the model runs in eval mode (BatchNorm running statistics,
  never updated); its mode and parameters' `requires_grad` are restored afterwards.
* training (`PGDTraining`, PGD-AT of Madry et al.): examples are crafted in train mode, i.e.
  with batch statistics like the update that follows (as Madry et al. and Rice et al. do), but
  with BatchNorm's running-statistics update switched off while crafting, so the running
  statistics only ever see the batches the network is trained on (the final adversarial ones).

Random starts are uniform in the ε-ball, drawn on the CPU from seeded generators (the same seed
gives the same noise on every device) and copied to the device from pinned memory without a
host sync. Evaluation draws one noise tensor per image, so results do not depend on the batch
size. Gradients come from `torch.autograd.grad` w.r.t. the input only (parameters' `.grad`
untouched), under bf16 autocast on CUDA like the training loop.
"""
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from data import CifarSplit
from models import count_params, get_model, load_checkpoint, prunable_weights
from utils.errors import UserError
from utils.io import load_csv, load_json, save_json
from utils.train import autocast, cpu_generator


def uniform_noise(shape, generator, device):
    """U(−1, 1) noise drawn on the CPU from `generator`, moved to `device` without a host sync."""
    noise = torch.rand(shape, generator=generator).mul_(2).sub_(1)
    if torch.device(device).type == "cuda":
        noise = noise.pin_memory()
    return noise.to(device, non_blocking=True)


@contextlib.contextmanager
def input_grad_only(model):
    """Parameters stop requiring grad while an attack runs: no weight gradients are computed."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def frozen_bn_stats(model):
    """BatchNorm keeps using batch statistics in train mode but stops updating its buffers."""
    bns = [m for m in model.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def input_gradient(model, x, y):
    """(∇ₓ of the summed cross-entropy, detached logits) at x."""
    x = x.detach().requires_grad_(True)
    with autocast(x.device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def fgsm(model, x, y, eps):
    """Fast gradient sign method (Goodfellow et al.): one step of size ε from x itself.

    Returns (x_adv, logits at x): the clean prediction comes free from the same forward pass.
    """
    grad, logits = input_gradient(model, x, y)
    x_adv = (x.detach() + eps * grad.sign()).clamp_(0, 1)
    return x_adv, logits


def pgd(model, x, y, eps, step, steps, noise=None, track=False):
    """Projected gradient descent (Madry et al.): `steps` signed steps of size `step`.

    `noise` (U(−1, 1), shaped like x) gives the random start x + ε·noise; None starts at x.
    With `track`, also returns a bool per image: correct at every iterate (the start, each step
    and the final one), so an image counts as robust only if no iterate fooled the model.
    """
    x = x.detach()
    lo, hi = (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)
    x_adv = x if noise is None else torch.minimum(torch.maximum(x + eps * noise, lo), hi)
    robust = torch.ones_like(y, dtype=torch.bool) if track else None
    for _ in range(steps):
        grad, logits = input_gradient(model, x_adv, y)
        if track:
            robust &= logits.argmax(1) == y
        x_adv = torch.minimum(torch.maximum(x_adv + step * grad.sign(), lo), hi)
    if not track:
        return x_adv
    with torch.no_grad(), autocast(x.device):
        robust &= model(x_adv).argmax(1) == y
    return x_adv, robust


def check_attack(eps, step, steps, flags=("--eps", "--step", "--eval-steps")):
    """ε ≥ 0 and step > 0 (1/255 units), steps ≥ 0, or a UserError naming the flags."""
    if eps < 0 or step <= 0 or steps < 0:
        raise UserError(f"{flags[0]} must be >= 0, {flags[1]} > 0 and {flags[2]} >= 0 "
                        f"(got {eps:g}, {step:g}, {steps})")


def subset(split, n):
    """The first n images of a split (0 = all), still on its device."""
    if n < 0:
        raise UserError(f"the attacked subset must be >= 0 images (0 = all), got {n}")
    if not n or n >= len(split):
        return split
    return CifarSplit(split.images[:n], split.labels[:n], split.device)


def robust_evaluate(model, split, eps=8.0, step=2.0, steps=20, seed=0, batch_size=500,
                    limit=0, noise_stream="attack"):
    """Clean, FGSM and PGD-`steps` accuracy (%) on the first `limit` images of `split` (0 = all).

    ε and step are in 1/255 units. The model runs in eval mode; counts stay on the device and
    are read once at the end. The PGD random start is drawn per image from (seed, noise_stream),
    so the same checkpoint and seed give the same numbers.
    """
    split = subset(split, limit)
    eps_px, step_px = eps / 255, step / 255
    device = split.device
    noise = uniform_noise(tuple(split.images.shape), cpu_generator(seed, noise_stream), device)
    counts = torch.zeros(3, dtype=torch.long, device=device)  # clean, fgsm, pgd
    start = 0
    with eval_mode(model), input_grad_only(model):
        for x, y in split.batches(batch_size):
            x_fgsm, clean_logits = fgsm(model, x, y, eps_px)
            with torch.no_grad(), autocast(device):
                fgsm_correct = model(x_fgsm).argmax(1) == y
            _, pgd_correct = pgd(model, x, y, eps_px, step_px, steps,
                                 noise[start:start + len(y)], track=True)
            counts += torch.stack([(clean_logits.argmax(1) == y).sum(), fgsm_correct.sum(),
                                   pgd_correct.sum()])
            start += len(y)
    clean, fgsm_n, pgd_n = counts.tolist()
    n = len(split)
    return {"clean_acc": 100.0 * clean / n, "fgsm_acc": 100.0 * fgsm_n / n,
            "pgd_acc": 100.0 * pgd_n / n, "images": n}


class PGDTraining:
    """`perturb` for `train_run`: replaces each training batch with PGD examples (PGD-AT).

    Crafted in train mode with BatchNorm running statistics frozen (see the module docstring);
    the random-start generator is saved with the run so a resumed run draws the same noise.
    """

    def __init__(self, eps=8.0, step=2.0, steps=10, seed=0):
        self.eps, self.step, self.steps = eps / 255, step / 255, steps
        self.generator = cpu_generator(seed, "pgd-train")

    def __call__(self, model, x, y):
        noise = uniform_noise(tuple(x.shape), self.generator, x.device)
        with input_grad_only(model), frozen_bn_stats(model):
            return pgd(model, x, y, self.eps, self.step, self.steps, noise).detach()

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        # train_run loads resume.pt onto the device; a CPU generator needs its state on the CPU.
        self.generator.set_state(state["generator"].cpu())


class RobustMonitor:
    """`extra_metrics` for `train_run`: FGSM and PGD accuracy on a fixed test subset per epoch.

    The subset and the random start are the same every epoch, so the columns are comparable
    along the trajectory.
    """

    def __init__(self, test, eps=8.0, step=2.0, steps=10, seed=0, limit=1000):
        self.test = subset(test, limit)
        self.kwargs = dict(eps=eps, step=step, steps=steps, seed=seed, noise_stream="monitor")

    def __call__(self, model):
        r = robust_evaluate(model, self.test, **self.kwargs)
        return {"fgsm_acc": r["fgsm_acc"], "pgd_acc": r["pgd_acc"]}


def _f(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class AdversarialConfig:
    """The `--adv-*` flags every task script takes (utils.experiment.task_parser); off by default."""
    adv_train: bool = _f(False, "train adversarially (PGD-AT, Madry et al.): every training batch "
                                "is replaced by its PGD examples; logs fgsm_acc/pgd_acc per epoch")
    adv_eps: float = _f(8.0, "L∞ budget ε of adversarial training, in 1/255 pixel units")
    adv_step: float = _f(2.0, "PGD step size, in 1/255 pixel units")
    adv_steps: int = _f(10, "PGD iterations per training batch (cost ≈ steps+1 × a natural epoch)")
    adv_monitor_subset: int = _f(1000, "first N test images attacked each epoch for the "
                                       "fgsm_acc/pgd_acc columns, PGD with --adv-steps (0 = all)")

    def validate(self):
        check_attack(self.adv_eps, self.adv_step, self.adv_steps,
                     ("--adv-eps", "--adv-step", "--adv-steps"))
        if self.adv_monitor_subset < 0:
            raise UserError(f"--adv-monitor-subset must be >= 0, got {self.adv_monitor_subset}")


def adversarial_train_kwargs(test, seed, eps=8.0, step=2.0, steps=10, monitor_subset=1000,
                             train=True):
    """`train_run` keyword arguments: PGD-AT `perturb` (if `train`) and the robust-accuracy columns."""
    kwargs = {"extra_metrics": RobustMonitor(test, eps, step, steps, seed, monitor_subset)}
    if train:
        kwargs["perturb"] = PGDTraining(eps, step, steps, seed)
    return kwargs


# --- Robust evaluation of saved checkpoints (robustness.py) --------------------------------

TRAININGS = ("natural", "pgd")
MASK_SOURCES = ("natural", "pgd")
SUMMARY_COLUMNS = ["model", "arch", "training", "sparsity", "clean_acc", "fgsm_acc", "pgd_acc",
                   "mask_from", "params", "experiment", "eps", "step", "eval_steps", "images",
                   "seed", "checkpoint"]
ATTACK_KEYS = ("eps", "step", "eval_steps", "images", "seed")
# (mask source, training) -> column prefix of tickets.csv
TICKET_KINDS = {("natural", "natural"): "natural_ticket",
                ("pgd", "natural"): "pgd_mask_natural_training",
                ("natural", "pgd"): "natural_mask_pgd_training",
                ("pgd", "pgd"): "boosting_ticket"}
TICKET_COLUMNS = (["arch", "sparsity"]
                  + [f"{k}_{m}" for k in TICKET_KINDS.values() for m in ("clean_acc", "pgd_acc")]
                  + ["mask_gain_pgd_acc"])


def _epoch_of(path):
    digits = path.stem.removeprefix("epoch_")
    return int(digits) if digits.isdigit() else None


def find_checkpoints(root):
    """(model name, path) of every dense and pruned network the tasks saved under `root`.

    Dense runs (train_dense.py's layout, a folder with epoch_EEE.pt files): the highest epoch,
    named by the folder (`dense`). Pruned and retrained networks: every `final.pt`, named by its
    folder relative to `root` (`magnitude/sparsity_50`, `lottery/imp/sparsity_90`,
    `early_bird/epoch_010/ratio_30`). robustness/ (this task's own runs) is left out, and so is
    ticket_transfer/ (MNIST LeNets, which CIFAR-10 attacks do not apply to).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    skip = ("robustness", "ticket_transfer")
    for run in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip):
        epochs = [p for p in run.glob("epoch_*.pt") if _epoch_of(p) is not None]
        if epochs:
            found.append((run.name, max(epochs, key=_epoch_of)))
    for path in sorted(root.rglob("final.pt")):
        rel = path.parent.relative_to(root)
        if rel.parts and rel.parts[0] not in skip:
            found.append((rel.as_posix(), path))
    return found


def checkpoint_sparsity(model, ckpt):
    """Fraction of the full architecture's prunable weights that are gone.

    Unstructured (a `mask`): the masked-out fraction. Compact channel-pruned networks (`widths`):
    the weights the removed channels took with them. Both together when a checkpoint has both.
    """
    config = ckpt.get("config") or {}
    full = get_model(ckpt["arch"], shortcut=config.get("shortcut", "B"))
    total = sum(w.numel() for w in prunable_weights(full).values())
    mask = ckpt.get("mask") or {}
    kept = sum(int(mask[n].count_nonzero()) if n in mask else w.numel()
               for n, w in prunable_weights(model).items())
    return 1.0 - kept / total


def cached_robust_row(name, path, cache_path, test, attack, device, force=False, batch_size=500,
                      **extra):
    """The summary row of one checkpoint: robust_evaluate on `test`, cached in `cache_path`.

    The cache is used only for the same attack settings, device and checkpoint file (size and
    modification time), so a retrained checkpoint is evaluated again.
    """
    path, cache_path = Path(path), Path(cache_path)
    stat = path.stat() if path.is_file() else None
    key = dict(attack, checkpoint=str(path), device=str(device),
               size=stat and stat.st_size, mtime_ns=stat and stat.st_mtime_ns)
    if not force and stat and cache_path.is_file():
        cached = load_json(cache_path)
        if cached.get("key") == key:
            return cached["row"]
    model, ckpt = load_checkpoint(path, device)
    r = robust_evaluate(model, test, attack["eps"], attack["step"], attack["eval_steps"],
                        attack["seed"], batch_size, attack["eval_subset"])
    config = ckpt.get("config") or {}
    row = {"model": name, "arch": ckpt["arch"],
           "training": "pgd" if config.get("adv_train") else "natural",
           "sparsity": round(checkpoint_sparsity(model, ckpt), 4), "clean_acc": r["clean_acc"],
           "fgsm_acc": r["fgsm_acc"], "pgd_acc": r["pgd_acc"], "mask_from": "",
           "params": count_params(model), "eps": attack["eps"], "step": attack["step"],
           "eval_steps": attack["eval_steps"], "images": r["images"], "seed": attack["seed"],
           "checkpoint": str(path), **extra}
    save_json({"key": key, "row": row}, cache_path)
    return row


def _same_attack(a, b):
    try:
        return all(float(a[k]) == float(b[k]) for k in ATTACK_KEYS)
    except (KeyError, TypeError, ValueError):
        return False


def merge_summary(path, rows):
    """This run's rows plus the rows of an earlier summary.csv for other models, kept only if
    they were attacked the same way (so one table never mixes attack strengths)."""
    path = Path(path)
    old = load_csv(path) if path.is_file() else []
    new_models = {r["model"] for r in rows}
    kept = [r for r in old if r.get("model") not in new_models
            and (not rows or _same_attack(r, rows[0]))]
    order = {"evaluate": 0, "adversarial": 1, "size": 2}
    return sorted(kept + rows, key=lambda r: (order.get(r.get("experiment"), 3), r["model"]))


def ticket_table(summary):
    """One row per (arch, sparsity) of the adversarial/size experiments: clean and PGD accuracy
    of the four tickets (mask source x training). At sparsity 0 the dense networks fill in (the
    mask source is moot there). mask_gain_pgd_acc = boosting − natural-mask-PGD-trained: what
    drawing the mask from the adversarially trained network adds."""
    table = {}
    for r in summary:
        if r.get("experiment") not in ("adversarial", "size"):
            continue
        arch, sparsity, training = r["arch"], round(float(r["sparsity"]), 4), r["training"]
        sources = [r["mask_from"]] if r.get("mask_from") else list(MASK_SOURCES)
        out = table.setdefault((arch, sparsity), {"arch": arch, "sparsity": sparsity})
        for source in sources:
            kind = TICKET_KINDS[(source, training)]
            out[f"{kind}_clean_acc"] = float(r["clean_acc"])
            out[f"{kind}_pgd_acc"] = float(r["pgd_acc"])
    for out in table.values():
        a, b = out.get("boosting_ticket_pgd_acc"), out.get("natural_mask_pgd_training_pgd_acc")
        out["mask_gain_pgd_acc"] = None if a is None or b is None else a - b
    return [table[k] for k in sorted(table)]
