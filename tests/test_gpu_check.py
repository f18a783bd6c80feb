"""bench/gpu_check.sh, the one prepared GPU check: without a GPU it refuses in one line (exit 2),
and the figures it reads from its steps follow their definitions (hand-made inputs). The check
itself runs only on a GPU (bench/README.md)."""
import json
import math
import os
import subprocess
import sys
import time

import pytest

import train_dense
from bench.gpu_check import (JOBS_SEEDS, Check, accuracy_cmd, accuracy_verdict, describe_tests, jobs_cmd,
                              pytest_results, throughput_figures)
from conftest import REPO, assert_user_error, run_script

CPU = {0: 67.94, 1: 67.35, 2: 64.50, 3: 67.26, 4: 70.01, 5: 69.32}  # bench/README.md, 67.73 ± 1.93
CPU_SD = 1.9271118  # their sample sd


@pytest.mark.parametrize("command", [["bash", "bench/gpu_check.sh"], [sys.executable, "bench/gpu_check.py"]])
def test_without_a_gpu_the_check_refuses_in_one_line(tmp_path, command):
    out = tmp_path / "out"
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OUT=str(out)))
    assert_user_error(proc, "needs a CUDA GPU", "bash bench/gpu_check.sh" if "python" in command[0] else "torch")
    assert proc.stdout == "" and not out.exists()  # nothing run, nothing written


def test_accuracy_against_the_cpu_by_the_noise_rule():
    # within noise: Δ = 67.0 − 67.73, se = √(1²/3 + sd_cpu²/6)
    v = accuracy_verdict({0: 67.0, 1: 68.0, 2: 66.0}, CPU)
    se = math.sqrt(1 / 3 + CPU_SD ** 2 / 6)
    assert v["diff"] == pytest.approx(-0.73) and v["se"] == pytest.approx(se, rel=1e-6)
    assert v["within_noise"] and v["text"].startswith(f"within noise (Δ = -0.73 ± {se:.2f} points")
    # paired by seed with the CPU's seeds 0-2: differences -0.94, +0.65, +1.50
    diffs = [67.0 - 67.94, 68.0 - 67.35, 66.0 - 64.50]
    assert v["paired_diff"] == pytest.approx(sum(diffs) / 3)
    mean = sum(diffs) / 3
    assert v["paired_se"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3))
    # called: 7.73 points below with se 0.84
    v = accuracy_verdict({0: 60.0, 1: 60.5, 2: 59.5}, CPU)
    assert v["se"] == pytest.approx(math.sqrt(0.25 / 3 + CPU_SD ** 2 / 6), rel=1e-6)
    assert v["called"] and v["text"].startswith("lower (Δ = -7.73")
    # one GPU seed: the CPU's spread stands for its own, se = sd_cpu·√(1 + 1/6)
    v = accuracy_verdict({0: 66.0}, CPU)
    assert v["se"] == pytest.approx(CPU_SD * math.sqrt(7 / 6), rel=1e-6) and v["within_noise"]


LOG = """\
tests/test_cuda.py::test_a PASSED                                      [ 20%]
tests/test_cuda.py::test_b[fp32-0.01-0.05] FAILED                      [ 40%]
tests/test_cuda.py::test_c PASSED                                      [ 60%]
tests/test_cuda.py::test_c ERROR                                       [ 60%]
tests/test_cuda.py::test_d SKIPPED (needs a CUDA GPU)                  [ 80%]
============================= slowest durations ==============================
12.50s call     tests/test_cuda.py::test_a
0.20s setup    tests/test_cuda.py::test_a
=========================== short test summary info ============================
FAILED tests/test_cuda.py::test_b[fp32-0.01-0.05] - AssertionError: 2.1 != 2.0 ± 2.0e-02
ERROR tests/test_cuda.py::test_c - RuntimeError: boom
"""


def test_pytest_results_are_read_line_by_line():
    r = pytest_results(LOG)
    assert r["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}  # test_c: its teardown failed
    assert r["failed"] == {"tests/test_cuda.py::test_b[fp32-0.01-0.05]": "AssertionError: 2.1 != 2.0 ± 2.0e-02",
                           "tests/test_cuda.py::test_c": "RuntimeError: boom"}
    assert r["call_seconds"] == {"tests/test_cuda.py::test_a": 12.5}
    text = describe_tests(r)
    assert text.startswith("1 error, 1 failed, 1 passed, 1 skipped; failing: test_b[fp32-0.01-0.05] (AssertionError")
    # cut short (a time limit): only what finished is counted
    assert pytest_results(LOG.splitlines()[0])["counts"] == {"passed": 1}
    assert describe_tests(pytest_results("")) == "no test finished"


def test_throughput_figures_decide_compile_over_160_epochs():
    report = {"precision": "bf16", "batch_size": 128, "test_images": 1017, "compile_seconds": 40.0,
              "ours": {"epoch_seconds_per_50k": 3.0, "images_per_s": 17000, "eval_seconds": 0.05},
              "ours compiled": {"epoch_seconds_per_50k": 2.5, "images_per_s": 21000, "eval_seconds": 0.02,
                                "bare_step_images_per_s": 30000}}
    figures = dict(throughput_figures(report))
    # 160 x 3.0 = 480 s eager against 160 x 2.5 + 40 = 440 s compiled: compiling pays
    assert figures["160 full epochs, s: eager / compiled incl. compiling"] == "480 / 440: --compile auto pays on CUDA: keep it on"
    assert figures["evaluation of 10,000 images, s, eager / compiled"] == f"{0.05 * 10000 / 1017:.3f} / {0.02 * 10000 / 1017:.3f}"
    report["compile_seconds"] = 90.0  # 160 x 2.5 + 90 = 490 s > 480 s
    assert dict(throughput_figures(report))["160 full epochs, s: eager / compiled incl. compiling"].endswith(
        "does NOT pay: make it off")


def test_steps_run_within_their_time_and_the_summary_is_written_as_they_go(tmp_path):
    """The check's runner: a step's output is kept, a step over its time is killed with its
    children (process group) and reported, and summary.md/.json hold every figure so far."""
    check = Check(tmp_path / "out", tmp_path / "work", budget=60, env=dict(os.environ), data=tmp_path)
    ok, _, text = check.run("tests", [[sys.executable, "-c", "print('figure 1')"]], cap=30)
    assert ok and "figure 1" in text
    check.figure("tests", "a figure", "1.23", "python -c ...")
    t0 = time.monotonic()
    ok, seconds, _ = check.run("smoke", [["bash", "-c", "sleep 30 & sleep 30; echo never"]], cap=1)
    assert not ok and time.monotonic() - t0 < 10 and seconds < 10
    assert check.steps["smoke"]["status"].startswith("timed out")
    ok, _, _ = check.run("jobs", [[sys.executable, "-c", "import sys; sys.exit(3)"]], cap=30)
    assert not ok and check.steps["jobs"]["status"] == "exit codes [3]"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["figures"] == [{"step": "tests", "name": "a figure", "value": "1.23", "command": "python -c ..."}]
    assert summary["steps"]["tests"]["status"] == "ok"
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "- a figure: **1.23**" in md and "`python -c ...`" in md and "## smoke (timed out" in md
    log = (tmp_path / "out" / "check.log").read_text()
    assert "===== tests: python -c 'print('\"'\"'figure 1'\"'\"')'" in log and "\nfigure 1\n" in log
    assert "never" not in log.splitlines()  # killed before it printed


def test_the_checks_commands_are_the_protocols(tmp_path):
    """The GPU minutes are not spent on a flag typo: the mini-protocol is train_dense.py with the
    CPU's recipe, and the --jobs comparison runs only the dense runs, whole slice, four seeds."""
    args = train_dense.parse_args([str(a) for a in accuracy_cmd("/d", tmp_path, 2)[2:]])
    assert (args.epochs, tuple(args.milestones), args.seed, args.device) == (30, (15, 23), 2, "cuda")
    assert (args.lr, args.batch_size, args.precision, args.compile) == (0.1, 128, "auto", "auto")
    assert (args.train_subset, args.test_subset, args.data_dir) == (0, 0, "/d/cifar10")
    for jobs in (1, 4):
        cmd = jobs_cmd("/d", tmp_path / "r", jobs)
        out = run_script("run_all.py", *cmd[2:], "--dry-run").stdout.splitlines()
        assert [line.split(":")[0] for line in out] == [f"seed_{s}/train_dense" for s in JOBS_SEEDS]
        for line in out:
            assert "--train-subset 0 --test-subset 0" in line and "--device cuda" in line and "--epochs 4" in line
        assert cmd[cmd.index("--jobs") + 1] == jobs
