"""L∞ attacks on [0, 1] pixels (FGSM, PGD), robust evaluation, and PGD adversarial training.

The attack maths only; the robustness experiments' bookkeeping is utils/robustness.py and the
`--adv-*` flags are `utils.config.AdversarialConfig`.

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
untouched).

Precision: evaluation (`robust_evaluate`, hence the per-epoch `RobustMonitor`) always runs in
fp32, on every device, with TF32 off on CUDA, whatever the training precision: bf16 input
gradients lose sign bits of small components and can weaken the attack, which would overstate
robustness. Crafting training examples (`PGDTraining`) follows the training precision (bf16
autocast where the training loop uses it), as the update that follows does.
"""
import contextlib

import torch
import torch.nn.functional as F

from data import CifarSplit
from utils.errors import UserError
from utils.train import autocast, cpu_generator, strict_fp32


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


def _precision(device, amp):
    """The training loop's autocast when `amp` (True = 'auto', or a --precision value), else
    nothing (fp32)."""
    if not amp:
        return contextlib.nullcontext()
    return autocast(device, "auto" if amp is True else amp)


def input_gradient(model, x, y, amp=True):
    """(∇ₓ of the summed cross-entropy, detached logits) at x. `amp`: the training precision
    (bf16 autocast where training uses it); False: fp32."""
    x = x.detach().requires_grad_(True)
    with _precision(x.device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def fgsm(model, x, y, eps, amp=True):
    """Fast gradient sign method (Goodfellow et al.): one step of size ε from x itself.

    Returns (x_adv, logits at x): the clean prediction comes free from the same forward pass.
    """
    grad, logits = input_gradient(model, x, y, amp)
    x_adv = (x.detach() + eps * grad.sign()).clamp_(0, 1)
    return x_adv, logits


def pgd(model, x, y, eps, step, steps, noise=None, track=False, amp=True):
    """Projected gradient descent (Madry et al.): `steps` signed steps of size `step`.

    `noise` (U(−1, 1), shaped like x) gives the random start x + ε·noise; None starts at x.
    With `track`, also returns a bool per image: correct at every iterate (the start, each step
    and the final one), so an image counts as robust only if no iterate fooled the model.
    `amp` as in `input_gradient`.
    """
    x = x.detach()
    lo, hi = (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)
    x_adv = x if noise is None else torch.minimum(torch.maximum(x + eps * noise, lo), hi)
    robust = torch.ones_like(y, dtype=torch.bool) if track else None
    for _ in range(steps):
        grad, logits = input_gradient(model, x_adv, y, amp)
        if track:
            robust &= logits.argmax(1) == y
        x_adv = torch.minimum(torch.maximum(x_adv + step * grad.sign(), lo), hi)
    if not track:
        return x_adv
    with torch.no_grad(), _precision(x.device, amp):
        robust &= model(x_adv).argmax(1) == y
    return x_adv, robust


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

    ε and step are in 1/255 units. The model runs in eval mode and in fp32 (`strict_fp32`: no
    autocast, no TF32), whatever the training precision; counts stay on the device and are read
    once at the end. The PGD random start is drawn per image from (seed, noise_stream),
    so the same checkpoint and seed give the same numbers.
    """
    split = subset(split, limit)
    eps_px, step_px = eps / 255, step / 255
    device = split.device
    noise = uniform_noise(tuple(split.images.shape), cpu_generator(seed, noise_stream), device)
    counts = torch.zeros(3, dtype=torch.long, device=device)  # clean, fgsm, pgd
    start = 0
    with eval_mode(model), input_grad_only(model), strict_fp32(device):
        for x, y in split.batches(batch_size):
            x_fgsm, clean_logits = fgsm(model, x, y, eps_px, amp=False)
            with torch.no_grad():
                fgsm_correct = model(x_fgsm).argmax(1) == y
            _, pgd_correct = pgd(model, x, y, eps_px, step_px, steps,
                                 noise[start:start + len(y)], track=True, amp=False)
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

    def __init__(self, eps=8.0, step=2.0, steps=10, seed=0, precision="auto"):
        self.eps, self.step, self.steps = eps / 255, step / 255, steps
        self.precision = precision  # the training loop's --precision: the update sees the same
        self.generator = cpu_generator(seed, "pgd-train")

    def __call__(self, model, x, y):
        noise = uniform_noise(tuple(x.shape), self.generator, x.device)
        with input_grad_only(model), frozen_bn_stats(model):
            return pgd(model, x, y, self.eps, self.step, self.steps, noise, amp=self.precision).detach()

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


def adversarial_train_kwargs(test, seed, eps=8.0, step=2.0, steps=10, monitor_subset=1000,
                             train=True, precision="auto"):
    """`train_run` keyword arguments: PGD-AT `perturb` (if `train`) and the robust-accuracy columns."""
    kwargs = {"extra_metrics": RobustMonitor(test, eps, step, steps, seed, monitor_subset)}
    if train:
        kwargs["perturb"] = PGDTraining(eps, step, steps, seed, precision)
    return kwargs
