"""FGSM / PGD on the real CIFAR-10 slice: budget and clipping, attack strength, mode handling,
PGD-AT's perturb (BN statistics, resume state), reproducibility from a checkpoint, evaluation
in fp32 whatever the training precision, and no attack code in the scripts that do not attack."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from data import load_cifar10
from models import load_checkpoint
from utils.attacks import (PGDTraining, RobustMonitor, fgsm, frozen_bn_stats, pgd, robust_evaluate,
                           subset, uniform_noise)
from utils.train import cpu_generator, evaluate

EPS, STEP = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def slice64(data_dir):
    train, test = load_cifar10(data_dir, download=False, train_subset=64, test_subset=64)
    return train, test


@pytest.fixture(scope="module")
def fitted(tiny_dense, slice64):
    """tiny_dense's epoch-3 network with its last layer fitted to 64 real training images.

    The attacks are measured on those 64 images: clean accuracy is then high, so an attack that
    does nothing cannot hide behind a network that is wrong anyway. Only the linear head is fitted
    (on the body's eval-mode features), which takes a fraction of a second on the CPU.
    """
    train, _ = slice64
    model, _ = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
    model.eval()
    x, y = next(train.batches(len(train)))
    feats = []
    hook = model.linear.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.linear.parameters(), lr=0.05)
    for _ in range(2000):  # 64 points, 650 parameters: cheap, and reliably fitted
        loss = F.cross_entropy(model.linear(feats[0]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    assert evaluate(model, train, precision="fp32")[1] >= 90, "the head should fit 64 images"
    return model, train


def batch(split, n=64):
    return next(split.batches(n))


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_budget_and_clipping(fitted):
    model, train = fitted
    x, y = batch(train, 32)
    noise = uniform_noise(tuple(x.shape), cpu_generator(0, "t"), x.device)
    # a large step makes every iterate hit the ε-box and the [0, 1] walls
    for x_adv in (fgsm(model, x, y, EPS)[0], pgd(model, x, y, EPS, 3 * STEP, 4, noise),
                  pgd(model, x, y, EPS, STEP, 5, None)):
        delta = x_adv - x
        assert delta.abs().max() <= EPS + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert delta.abs().max() >= EPS - 1e-6  # it really moved to the budget's edge
    x_fgsm = fgsm(model, x, y, EPS)[0]
    inside = (x > EPS) & (x < 1 - EPS)  # pixels that no wall clips: FGSM moves them by exactly ε
    assert inside.sum() > 1000
    assert torch.allclose((x_fgsm - x)[inside].abs(), torch.full_like(x[inside], EPS), atol=1e-6)
    saturated = x == 1.0  # real images have white pixels: clipped, never pushed above 1
    assert saturated.any() and (x_fgsm[saturated] <= 1).all()


def test_attacks_lower_accuracy_in_order(fitted):
    model, train = fitted
    r = robust_evaluate(model, train, steps=5, seed=0, batch_size=32)
    assert r["images"] == 64
    assert r["clean_acc"] >= 90
    assert r["pgd_acc"] <= r["clean_acc"] / 3, r  # far below clean: the attack works
    assert r["fgsm_acc"] <= r["clean_acc"] - 30, r
    assert r["pgd_acc"] <= r["fgsm_acc"] + 100 * 3 / 64, r  # PGD at least as strong, within 3 images
    weak = robust_evaluate(model, train, eps=1, step=0.5, steps=2, seed=0, limit=32)
    assert weak["pgd_acc"] > 50  # a tiny budget barely hurts: the damage above is the budget's
    none = robust_evaluate(model, train, eps=0, step=1, steps=1, seed=0)
    assert none["fgsm_acc"] == none["pgd_acc"] == none["clean_acc"] == r["clean_acc"]


def test_evaluation_restores_mode_and_leaves_model_untouched(fitted):
    model, train = fitted
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (True, False):
        model.train(mode)
        r1 = robust_evaluate(model, train, steps=2, seed=3, limit=32)
        assert model.training is mode
        assert all(m.training is mode for m in model.modules())
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
        assert_same(before_state, model.state_dict())  # eval mode: BN running stats untouched
        # crafted in eval mode whatever the caller's mode: same numbers either way
        assert r1 == robust_evaluate(model, train, steps=2, seed=3, limit=32)
    model.eval()


def test_pgd_training_perturb_keeps_bn_stats_and_resumes(fitted):
    model, train = fitted
    x, y = batch(train, 32)
    model.train()
    before = bn_state(model)
    perturb = PGDTraining(eps=8, step=2, steps=2, seed=1)
    state = perturb.state_dict()
    x1 = perturb(model, x, y)
    assert model.training and all(m.track_running_stats for m in model.modules()
                                  if isinstance(m, torch.nn.BatchNorm2d))
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert_same(before, bn_state(model))  # crafting never moves the running statistics
    assert (x1 - x).abs().max() <= EPS + 1e-6 and 0 <= x1.min() and x1.max() <= 1
    assert not x1.requires_grad and (x1 - x).abs().max() > EPS / 2
    x2 = perturb(model, x, y)
    assert not torch.equal(x1, x2)  # a new random start per batch
    perturb.load_state_dict(state)  # as train_run does on resume
    assert torch.equal(perturb(model, x, y), x1)
    # crafted in train mode (batch statistics, like the update that follows), not in eval mode
    noise = uniform_noise(tuple(x.shape), cpu_generator(1, "pgd-train"), x.device)
    with frozen_bn_stats(model):
        assert torch.equal(pgd(model, x, y, EPS, STEP, 2, noise), x1)
    model.eval()
    assert not torch.equal(pgd(model, x, y, EPS, STEP, 2, noise), x1)


def test_robust_accuracy_reproduces_from_checkpoint(tiny_dense, slice64):
    _, test = slice64
    runs = []
    for _ in range(2):
        model, _ = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
        runs.append(robust_evaluate(model, test, steps=2, seed=7, batch_size=12, limit=32))
    assert runs[0] == runs[1]
    # the random start is drawn per image: the batch size does not change the numbers
    model, _ = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
    assert robust_evaluate(model, test, steps=2, seed=7, batch_size=32, limit=32) == runs[0]
    assert runs[0]["images"] == 32
    monitor = RobustMonitor(test, steps=2, seed=7, limit=16)
    assert monitor(model) == monitor(model)
    assert len(subset(test, 16)) == 16 and len(subset(test, 0)) == len(test)


def test_robust_evaluation_is_fp32_whatever_the_training_precision(fitted):
    """bf16 training precision changes the PGD training examples but never the evaluation."""
    model, train = fitted
    x, y = batch(train, 32)
    crafted = {p: PGDTraining(steps=2, seed=1, precision=p)(model.train(), x, y) for p in ("bf16", "fp32")}
    model.eval()
    # the training perturbation does follow the training precision (so the setting takes effect)
    assert not torch.equal(crafted["bf16"], crafted["fp32"])
    # the evaluation's forward passes see fp32 activations, never bf16, even inside a bf16 autocast
    dtypes = set()
    hook = model.linear.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    try:
        fp32_numbers = robust_evaluate(model, train, steps=3, seed=5, limit=48)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert robust_evaluate(model, train, steps=3, seed=5, limit=48) == fp32_numbers
    finally:
        hook.remove()
    assert dtypes == {torch.float32}


def test_scripts_that_do_not_attack_do_not_import_attack_code():
    code = ("import sys; import train_dense, prune_magnitude, lottery_imp, early_bird, plot_results, "
            "make_report, run_all; print('utils.attacks' in sys.modules, 'utils.robustness' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    out = subprocess.run([sys.executable, "-c", "import sys, robustness; print('utils.attacks' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]  # the check can see an import
