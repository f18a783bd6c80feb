"""CPU threading chosen at start-up (utils/runtime.py): passive OpenMP waiting unless the user
chose, threads capped to the cores a container grants, set before PyTorch loads."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO
from test_docs import SCRIPTS
from utils import runtime

NO_TRAINING = {"run_all", "plot_results", "make_report"}


@pytest.mark.parametrize("env, want", [
    ({}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {}),  # the user's choice wins
    ({"GOMP_SPINCOUNT": "10000"}, {}),  # so does a spin count
])
def test_wait_policy_unless_the_user_chose(env, want, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: os.cpu_count())
    chosen = runtime.configure(env)
    assert chosen == want
    assert env.get("OMP_WAIT_POLICY") == want.get("OMP_WAIT_POLICY", env.get("OMP_WAIT_POLICY"))


def test_threads_capped_to_the_cores_granted(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert runtime.usable_cores() <= 4
    env = {}
    runtime.configure(env)
    assert env["OMP_NUM_THREADS"] == str(runtime.usable_cores())
    env = {"OMP_NUM_THREADS": "2"}
    runtime.configure(env)
    assert env["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - NO_TRAINING))
def test_training_scripts_set_threads_before_torch_loads(script):
    tree = ast.parse((REPO / f"{script}.py").read_text())
    first = next(n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.Import) and first.names[0].name == "utils.runtime", script


def test_a_script_process_waits_passively():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import train_dense, os, torch; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "PASSIVE" and int(out[1]) >= 1
