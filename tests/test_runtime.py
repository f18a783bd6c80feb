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


@pytest.mark.parametrize("env, load, want", [
    ({}, 2.0, {"OMP_WAIT_POLICY": "PASSIVE"}),  # a busy machine: threads sleep while they wait
    ({}, 0.1, {}),  # a quiet one: libgomp's spinning is faster
    ({}, None, {}),  # load unknown (no /proc/stat)
    ({"OMP_WAIT_POLICY": "ACTIVE"}, 2.0, {}),  # the user's choice wins
    ({"GOMP_SPINCOUNT": "10000"}, 2.0, {}),  # so does a spin count
])
def test_wait_policy_follows_the_load_unless_the_user_chose(env, load, want, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: os.cpu_count())
    before = dict(env)
    assert runtime.configure(env, load=lambda: load) == want
    assert env == {**before, **want}


def test_others_load_reads_the_machine():
    load = runtime.others_load(0.05)
    assert load is None or 0.0 <= load <= os.cpu_count() + 1e-9


def test_freed_memory_is_kept_unless_the_user_tuned_malloc():
    assert runtime.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is False
    if sys.platform.startswith("linux"):
        assert runtime.keep_freed_memory({}) is True


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


def test_a_script_process_chooses_before_torch_loads():
    """A process importing a training script got the policy its start-up chose (PASSIVE on a busy
    machine, unset on a quiet one) into its environment before torch loaded libgomp."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import sys; import train_dense, os, utils.runtime as r; "
            "print(r.CHOSEN.get('OMP_WAIT_POLICY', '-'), os.environ.get('OMP_WAIT_POLICY', '-'), "
            "'torch' in sys.modules, r.MALLOC_TUNED)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == out[1] and out[0] in ("PASSIVE", "-") and out[2] == "True"
    assert out[3] == str(sys.platform.startswith("linux"))
