"""train_dense.py end to end on the real CIFAR-10 slice, CPU, tiny settings."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_DATA, assert_user_error, run_script
from models import load_checkpoint, prunable_weights
from utils.io import load_csv, load_json

SMALL = [*TINY_DATA, "--train-subset", 256, "--test-subset", 128, "--milestones", 1]


def dirs(root):
    return ["--checkpoint-dir", root / "ck", "--results-dir", root / "res"]


def rows_without_seconds(path):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in load_csv(path)]


def same_weights(a, b):
    sa, sb = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_outputs_follow_the_contract(tiny_dense):
    run, res = tiny_dense["run"], tiny_dense["results"] / "dense"
    assert {p.name for p in run.iterdir()} == {"init.pt", "epoch_001.pt", "epoch_002.pt",
                                              "epoch_003.pt", "bn_history.pt"}
    init, ckpt0 = load_checkpoint(run / "init.pt")
    assert ckpt0["epoch"] == 0 and ckpt0["arch"] == "resnet20" and ckpt0["config"]["epochs"] == 3
    rows = load_csv(res / "trajectory.csv")
    assert list(rows[0])[:6] == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert {"seconds", "weight_distance"} <= set(rows[0])
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0, 0.1, 0.1, 0.01])  # milestone 2
    history = torch.load(run / "bn_history.pt", weights_only=True)
    assert history["bn1"].shape == (4, 16) and history["layer3.2.bn1"].shape == (4, 64)
    w0 = prunable_weights(init)
    for e in (1, 2, 3):
        model, ckpt = load_checkpoint(run / f"epoch_{e:03d}.pt")
        assert ckpt["epoch"] == e
        for name, bn_gamma in history.items():  # row e is γ after epoch e
            assert torch.equal(bn_gamma[e], model.get_submodule(name).weight.detach())
        distance = sum(((w - w0[n]) ** 2).sum().item() for n, w in prunable_weights(model).items())
        assert float(rows[e]["weight_distance"]) == pytest.approx(distance, rel=1e-4)
    assert float(rows[0]["weight_distance"]) == 0.0
    # ‖θ_e − θ_1‖₂ and ‖θ_1‖₂ over every parameter (EarlyCroP's authors' detector); blank at epoch 0
    theta1 = torch.cat([p.detach().double().flatten() for p in load_checkpoint(run / "epoch_001.pt")[0].parameters()])
    assert theta1.numel() == 272_474 and rows[0]["distance_from_epoch1"] == rows[0]["norm_epoch1"] == ""
    for e in (1, 2, 3):
        theta = torch.cat([p.detach().double().flatten() for p in load_checkpoint(run / f"epoch_{e:03d}.pt")[0].parameters()])
        assert float(rows[e]["distance_from_epoch1"]) == pytest.approx(float((theta - theta1).norm()), rel=1e-4, abs=1e-9)
        assert float(rows[e]["norm_epoch1"]) == pytest.approx(float(theta1.norm()), rel=1e-4)
    assert torch.equal(history["bn1"][0], torch.ones(16))  # γ starts at 1
    summary = load_json(res / "summary.json")
    assert summary["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-4)
    assert summary["params"] == 272_474 and summary["epochs"] == 3 and summary["seconds"] > 0


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        run_script("train_dense.py", *SMALL, "--epochs", 1, "--seed", seed, *dirs(tmp_path / name))
    traj = {n: rows_without_seconds(tmp_path / n / "res/dense/trajectory.csv") for n in "abc"}
    assert traj["a"] == traj["b"]
    assert traj["a"] != traj["c"]
    for f in ("init.pt", "epoch_001.pt"):
        assert same_weights(tmp_path / "a/ck/dense" / f, tmp_path / "b/ck/dense" / f)
    assert not same_weights(tmp_path / "a/ck/dense/init.pt", tmp_path / "c/ck/dense/init.pt")


def test_killed_run_resumes_to_the_same_result(tmp_path):
    args = [*SMALL, "--epochs", 4, "--milestones", 2, "--save-epochs", 4]
    run_script("train_dense.py", *args, *dirs(tmp_path / "whole"))

    cmd = [sys.executable, str(REPO / "train_dense.py"), *map(str, args), *map(str, dirs(tmp_path / "cut"))]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = tmp_path / "cut/ck/dense/resume.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once epoch 2 is saved
        if resume.exists() and torch.load(resume, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut/res/dense/summary.json").exists(), "run finished before the kill"
    assert len(load_csv(tmp_path / "cut/res/dense/trajectory.csv")) < 5

    again = run_script("train_dense.py", *args, *dirs(tmp_path / "cut"))
    assert "resuming after epoch" in again.stderr
    assert rows_without_seconds(tmp_path / "cut/res/dense/trajectory.csv") == \
        rows_without_seconds(tmp_path / "whole/res/dense/trajectory.csv")
    assert same_weights(tmp_path / "cut/ck/dense/epoch_004.pt", tmp_path / "whole/ck/dense/epoch_004.pt")
    a = torch.load(tmp_path / "cut/ck/dense/bn_history.pt", weights_only=True)
    b = torch.load(tmp_path / "whole/ck/dense/bn_history.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not resume.exists()  # a finished run leaves no resume state
    assert not list((tmp_path / "cut").rglob("*.tmp"))  # nothing half-written


def test_finished_run_is_skipped_unless_forced(tmp_path):
    run_script("train_dense.py", *SMALL, "--epochs", 1, *dirs(tmp_path))
    final = tmp_path / "ck/dense/epoch_001.pt"
    stamp = final.stat().st_mtime_ns
    again = run_script("train_dense.py", *SMALL, "--epochs", 1, *dirs(tmp_path))
    assert "finished already" in again.stderr and final.stat().st_mtime_ns == stamp
    changed = run_script("train_dense.py", *SMALL, "--epochs", 2, *dirs(tmp_path), check=False)
    assert_user_error(changed, "other settings", "epochs", "--force")
    run_script("train_dense.py", *SMALL, "--epochs", 1, "--force", *dirs(tmp_path))
    assert final.stat().st_mtime_ns != stamp


def test_bn_l1_shrinks_the_scaling_factors(tmp_path):
    for name, lam in [("plain", 0), ("slim", 1e-2)]:
        run_script("train_dense.py", *SMALL, "--epochs", 1, "--bn-l1", lam, *dirs(tmp_path / name))
    plain = torch.load(tmp_path / "plain/ck/dense/bn_history.pt", weights_only=True)
    slim = torch.load(tmp_path / "slim/ck/dense/bn_history.pt", weights_only=True)
    l1 = {k: sum(h[-1].abs().sum().item() for h in v.values()) for k, v in [("p", plain), ("s", slim)]}
    # 2 steps of λ·sign(γ) at lr 0.1 take ≈ 2·0.1·0.01 = 0.002 off each |γ| of ~1; 688 channels
    assert l1["p"] - l1["s"] > 0.5


def test_two_epochs_on_real_images_beat_chance_clearly(tmp_path):
    run_script("train_dense.py", *TINY_DATA, "--epochs", 2, "--milestones", 1, *dirs(tmp_path))
    summary = load_json(tmp_path / "res/dense/summary.json")
    assert summary["test_acc"] > 25.0  # chance is 10% on 1,017 test images


@pytest.mark.parametrize("extra, words", [
    (["--data-dir", "/nonexistent", "--no-download"], ["CIFAR-10 not found", "--no-download"]),
    (["--arch", "resnet18"], ["unknown --arch", "resnet20"]),
    (["--train-subset", 9999], ["--train-subset 9999", "5085"]),
    (["--epochs", -1], ["--epochs must be >= 0"]),
    (["--epochs", "ten"], ["--epochs", "invalid int"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path, extra, words):
    proc = run_script("train_dense.py", *TINY_DATA, *extra, *dirs(tmp_path), check=False)
    assert_user_error(proc, *words)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.csv"))
