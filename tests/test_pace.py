"""A spinning run that collapses when the machine gets busy restarts itself with passive OpenMP
waiting (utils/pace.py) and ends bit-identical to a run that was never interrupted."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_DATA
from utils import pace
from utils.io import load_csv

TINY = [*TINY_DATA, "--train-subset", 128, "--test-subset", 64, "--epochs", 3, "--milestones", 2,
        "--save-epochs", 1, 2, 3]


@pytest.mark.parametrize("seconds, fastest, others, threads, cores, want", [
    (30.0, 7.0, 1.0, 2, 2, True),  # 4.3x the quiet epoch where the fair share is 1.5x: collapsed
    (14.0, 7.0, 2.0, 2, 2, False),  # 2x beside a 2-thread neighbour: exactly the fair share
    (20.0, 7.0, 2.0, 2, 2, False),  # 2.9x: within 1.5x of the fair 2x
    (30.0, 7.0, 0.2, 2, 2, False),  # slow, but the others are idle: not the neighbours' doing
    (3.0, 0.5, 1.0, 2, 2, False),  # 6x, but 2.25 s lost: less than a restart costs
    (30.0, 7.0, 6.0, 2, 8, True),  # 8 cores, 6 busy: every thread has a core (fair 1x), 4.3x slower
])
def test_collapse_is_judged_against_the_fair_share(seconds, fastest, others, threads, cores, want):
    assert pace.fair_share(2, 2.0, 2) == 2.0 and pace.fair_share(2, 0.0, 2) == 1.0
    assert pace.collapsed(seconds, fastest, others, threads, cores) is want


FAKE_LOAD = """
import os, runpy, sys
sys.path.insert(0, {repo!r})
import utils.runtime as runtime
# start spinning, as on a quiet machine (runtime.py chose passive if the test machine is busy);
# a restarted process was given OMP_WAIT_POLICY=PASSIVE by the guard and keeps it
if runtime.CHOSEN.pop("OMP_WAIT_POLICY", None):
    del os.environ["OMP_WAIT_POLICY"]
import utils.pace as pace
# the fake clock and load: each epoch takes 1 s on a quiet machine; the second one 20 s while
# other processes keep 1.5 of the cores busy
clock = {{"calls": 0, "wall": 0.0, "busy": 0.0}}
def fake_sample():
    clock["calls"] += 1
    step = 20.0 if clock["calls"] == 4 else 1.0  # call 1: the guard starts, 2: row 0, 3: epoch 1, 4: epoch 2
    clock["wall"] += step
    clock["busy"] += step * (1.5 + 0.5)  # the others' 1.5 cores plus this process's own 0.5
    return clock["wall"], clock["busy"], clock["wall"] * 0.5
pace.sample = fake_sample
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def run(cmd, env):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_collapsed_run_restarts_passive_and_ends_bit_identical(tmp_path, data_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = "2"  # the guard watches multi-threaded runs only; both runs use 2
    dirs = lambda name: ["--checkpoint-dir", tmp_path / name / "c", "--results-dir", tmp_path / name / "r"]  # noqa: E731
    # the reference: never interrupted (passive from the start: the wait policy changes no arithmetic)
    ref = run([sys.executable, str(REPO / "train_dense.py"), *map(str, TINY + dirs("ref"))],
              dict(env, OMP_WAIT_POLICY="PASSIVE"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "switching to passive" not in ref.stderr
    wrapper = tmp_path / "fake_load.py"
    wrapper.write_text(FAKE_LOAD.format(repo=str(REPO), script=str(REPO / "train_dense.py")))
    guarded = run([sys.executable, str(wrapper), *map(str, TINY + dirs("guarded"))], env)
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    # it said so, once, after epoch 2, and the restarted process resumed there
    assert guarded.stderr.count("switching to passive OpenMP waiting") == 1, guarded.stderr[-2000:]
    assert "epoch 2 took 20.0 s, 20.0x the fastest (1.0 s)" in guarded.stderr
    assert "resuming after epoch 2" in guarded.stderr
    # bit-identical: every checkpoint tensor, every trajectory value but the wall-clock seconds
    for name in ("init.pt", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "bn_history.pt"):
        a, b = (torch.load(tmp_path / run_name / "c" / "dense" / name, weights_only=True) for run_name in ("ref", "guarded"))
        a, b = (x["model"] if "model" in x else x for x in (a, b))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [load_csv(tmp_path / run_name / "r" / "dense" / "trajectory.csv") for run_name in ("ref", "guarded")]
    assert len(rows[0]) == 4
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows[1]]


def test_no_restart_in_process_or_when_the_user_chose_the_policy(monkeypatch):
    monkeypatch.setattr(pace, "_restart_allowed", False)
    assert not pace.PaceGuard.wanted("cpu", 2)  # main(argv) called from Python: never re-executed
    monkeypatch.setattr(pace, "_restart_allowed", True)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert pace.PaceGuard.wanted("cpu", 2)
    assert not pace.PaceGuard.wanted("cpu", 1)  # one thread: nothing spins
    assert not pace.PaceGuard.wanted("cuda:0", 2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice (or the guard's PASSIVE) stays
    assert not pace.PaceGuard.wanted("cpu", 2)
