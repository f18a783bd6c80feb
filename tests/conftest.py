"""Shared test fixtures: the real CIFAR-10 slice in ../shared/data and a tiny dense run.

Tests never download: every script is pointed at the slice with --no-download.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CIFAR_SLICE", REPO.parent / "shared" / "data" / "cifar10"))
TINY_DATA = ["--data-dir", str(DATA_DIR), "--no-download", "--device", "cpu"]
# The MNIST slice (17,435 training, 10,000 test images), a folder holding MNIST/raw/.
MNIST_DIR = Path(os.environ.get("MNIST_SLICE", REPO.parent / "shared" / "data" / "mnist"))


def run_script(script, *args, check=True, timeout=600):
    """Run an entry script as a user would; return the CompletedProcess (text mode)."""
    cmd = [sys.executable, str(REPO / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def assert_user_error(proc, *words):
    """Exit code 2, exactly one line on stderr, no traceback, naming each of `words`."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA_DIR / "cifar-10-batches-py").is_dir():
        pytest.fail(f"real CIFAR-10 slice not found at {DATA_DIR} (set CIFAR_SLICE)")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_dir():
    if not (MNIST_DIR / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST slice not found at {MNIST_DIR} (set MNIST_SLICE)")
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_dense(tmp_path_factory, data_dir):
    """A 3-epoch dense ResNet-20 on 512 real images, checkpoints at epochs 1, 2, 3.

    Returns a dict of paths: root, checkpoints, results, run (checkpoints/dense).
    Tests that need a trained network start from this instead of training their own.
    """
    root = tmp_path_factory.mktemp("tiny_dense")
    ckpt, res = root / "checkpoints", root / "results"
    run_script("train_dense.py", *TINY_DATA, "--train-subset", 512, "--test-subset", 256,
               "--epochs", 3, "--milestones", 2, "--save-epochs", 1, 2, 3,
               "--checkpoint-dir", ckpt, "--results-dir", res)
    return {"root": root, "checkpoints": ckpt, "results": res, "run": ckpt / "dense"}


@torch.no_grad()
def masked_model(model, keep):
    """The reference for channel surgery: a copy of `model` with the pruned channels' γ and β
    set to zero (what utils.channels.compact_model must reproduce exactly in eval mode)."""
    out = copy.deepcopy(model)
    for block, m in zip(out.blocks(), keep):
        drop = ~m.to(block.bn1.weight.device)
        block.bn1.weight[drop] = 0
        block.bn1.bias[drop] = 0
    return out.eval()


def no_gpu_reason():
    """Why the tests marked `cuda` are skipped here; None where PyTorch sees a CUDA GPU."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return (f"needs a CUDA GPU: PyTorch {torch.__version__} ({build}) sees none; run "
            "python -m pytest -m cuda on a machine with one")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped with the reason where there is no GPU (never errors)."""
    reason = no_gpu_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
