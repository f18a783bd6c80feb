"""run_all.py's launchers (utils/launch.py): the seed_<s> layout, the dependency graph, one GPU per
process (mocked device counts), Slurm submission through submitit's local executor, and the
one-line error without submitit."""
import re
import shlex
import sys

import pytest
import torch

import run_all
from conftest import TINY_DATA, assert_user_error, run_script
from utils.errors import UserError
from utils.launch import DEPENDS, GpuPool, Job, link_jobs, parse_minutes, run_local, to_submit


def dry_run(*args):
    out = run_script("run_all.py", "--dry-run", *args).stdout
    return {key: shlex.split(cmd) for key, cmd in (line.split(": ", 1) for line in out.splitlines())}


def value(argv, name):
    i = argv.index(name)
    return argv[i + 1]


def test_seeds_layout_one_replicate_per_seed(tmp_path):
    ck, res, plots = tmp_path / "ck", tmp_path / "r", tmp_path / "p"
    cmds = dry_run("--preset", "smoke", "--seeds", 0, 2, "--checkpoint-dir", ck, "--results-dir", res,
                   "--plots-dir", plots)
    training = [s for s, _ in run_all.STEPS if s not in ("plot_results", "make_report")]
    # step-major: both seeds' dense runs first, then both seeds' Task 2, ...; plots and report once, last
    assert list(cmds) == [f"seed_{s}/{step}" for step in training for s in (0, 2)] + ["plot_results", "make_report"]
    for s in (0, 2):
        for step in training:
            argv = cmds[f"seed_{s}/{step}"]
            assert value(argv, "--seed") == str(s)
            assert value(argv, "--checkpoint-dir") == str(ck / f"seed_{s}")
            assert value(argv, "--results-dir") == str(res / f"seed_{s}")
        # the tasks read their own seed's dense run
        assert value(cmds[f"seed_{s}/prune_magnitude"], "--from") == str(ck / f"seed_{s}" / "dense" / "epoch_004.pt")
        assert value(cmds[f"seed_{s}/lottery_imp"], "--rewind") == str(ck / f"seed_{s}" / "dense" / "init.pt")
        assert value(cmds[f"seed_{s}/early_bird"], "--dense-run") == str(ck / f"seed_{s}" / "dense")
    assert cmds["plot_results"][2:] == ["--results-dir", str(res), "--plots-dir", str(plots)]
    assert cmds["make_report"][2:] == ["--results-dir", str(res)]
    # one --seed (or none): today's layout, no seed_<s> folders
    one = dry_run("--preset", "smoke", "--seed", 3, "--checkpoint-dir", ck, "--results-dir", res)
    assert list(one) == [s for s, _ in run_all.STEPS]
    assert value(one["train_dense"], "--checkpoint-dir") == str(ck) and value(one["train_dense"], "--seed") == "3"
    assert "--seed" not in dry_run("--preset", "smoke")["train_dense"]


def _main_error(capsys, *argv):
    """run_all.main in this process: the exit code and stderr of a user error."""
    with pytest.raises(SystemExit) as exit_:
        run_all.main([str(a) for a in argv])
    return exit_.value.code, capsys.readouterr().err


def test_seeds_user_errors(capsys):
    assert_user_error(run_script("run_all.py", "--seeds", 0, 1, "--seed", 2, "--dry-run", check=False),
                      "--seed", "--seeds")
    code, err = _main_error(capsys, "--seeds", 1, 1, "--dry-run")
    assert code == 2 and err.startswith("error: --seeds lists a seed twice") and err.count("\n") == 1
    code, err = _main_error(capsys, "--launcher", "slurm", "--slurm-time", "2h", "--dry-run")
    assert code == 2 and "--slurm-time '2h'" in err and "HH:MM:SS" in err and err.count("\n") == 1


def test_dependency_graph():
    args = run_all.parse_args(["--preset", "smoke", "--seeds", "0", "1", "--checkpoint-dir", "ck", "--results-dir", "r"])
    jobs = run_all.plan_jobs(args)
    key = {i: (j.seed, j.step) for i, j in enumerate(jobs)}
    after = {(j.seed, j.step): {key[k] for k in j.after} for j in jobs}
    for s in (0, 1):
        assert after[(s, "train_dense")] == set() and after[(s, "ticket_transfer")] == set()
        for step in ("prune_magnitude", "lottery_imp", "early_bird", "three_regime", "prune_at_init"):
            assert after[(s, step)] == {(s, "train_dense")}
        assert after[(s, "earlycrop")] == {(s, "train_dense"), (s, "prune_at_init"), (s, "early_bird"),
                                           (s, "lottery_imp")}
        assert after[(s, "robustness")] == {(s, st) for st in ("train_dense", "prune_magnitude", "lottery_imp",
                                                                 "early_bird", "prune_at_init", "earlycrop")}
        assert after[(s, "deploy")] == after[(s, "robustness")]  # every network the leaderboard lists
    training = {(j.seed, j.step) for j in jobs if j.seed is not None}
    assert len(training) == 20
    assert after[(None, "plot_results")] == training
    assert after[(None, "make_report")] == training | {(None, "plot_results")}
    # a skipped step is no one's dependency
    args = run_all.parse_args(["--seeds", "0", "--skip", "prune_at_init", "plot_results"])
    jobs = run_all.plan_jobs(args)
    crop = next(j for j in jobs if j.step == "earlycrop")
    assert {jobs[k].step for k in crop.after} == {"train_dense", "early_bird", "lottery_imp"}
    assert {jobs[k].step for k in jobs[-1].after} == {s for s in DEPENDS if s != "prune_at_init"}


def test_parse_minutes():
    assert parse_minutes("90") == 90 and parse_minutes("12:00:00") == 720 and parse_minutes("00:01:30") == 2
    for bad in ("0", "1:2", "01:75:00", "x"):
        with pytest.raises(UserError):
            parse_minutes(bad)


def test_gpu_pool_round_robin():
    assert GpuPool(1).acquire() is None and GpuPool(0).acquire() is None  # one GPU: environment untouched
    pool = GpuPool(3)
    assert [pool.acquire() for _ in range(3)] == ["0", "1", "2"]
    pool.release("1")
    assert pool.acquire() == "1"  # the free one, not a held one
    assert pool.acquire() == "2"  # all held: shares, continuing in round-robin order
    # an existing CUDA_VISIBLE_DEVICES list is respected (its entries, as written)
    pool = GpuPool(2, "4, 6")
    assert pool.devices == ["4", "6"] and [pool.acquire(), pool.acquire()] == ["4", "6"]
    assert GpuPool(1, "GPU-a").devices == [] and GpuPool(0, "").devices == []


def _probe_jobs(tmp_path, n):
    """n jobs that record the CUDA_VISIBLE_DEVICES they were started with, and overlap in time."""
    code = "import os, sys, time; time.sleep(0.6); print('CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
    jobs = [Job(f"probe{i}", [sys.executable, "-c", code], tmp_path / "logs", tmp_path) for i in range(n)]
    return link_jobs(jobs)


def _devices(jobs):
    return [re.findall(r"^CVD=(.*)$", j.log_path.read_text(), re.M)[-1] for j in jobs]


@pytest.mark.parametrize("count", [2, 3])
def test_each_process_gets_its_own_gpu(tmp_path, monkeypatch, capsys, count):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    env = {k: v for k, v in __import__("os").environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    gpus = GpuPool.from_environment(env, "auto")
    assert gpus.devices == [str(i) for i in range(count)]
    jobs = _probe_jobs(tmp_path, count)
    assert run_local(jobs, count, env, gpus, poll_s=0.05) == 0
    assert _devices(jobs) == [str(i) for i in range(count)]  # side by side, one each, round-robin
    assert all(j.marker.is_file() for j in jobs)
    # more jobs than GPUs, --jobs = GPU count: each new process takes the GPU just freed
    jobs = _probe_jobs(tmp_path / "more", 2 * count)
    assert run_local(jobs, count, env, gpus, poll_s=0.05) == 0
    devices = _devices(jobs)
    assert devices[:count] == [str(i) for i in range(count)] and sorted(devices) == sorted(devices[:count] * 2)
    # an existing list: its entries are handed out; --device cpu: nothing
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(10 + i) for i in range(count))
    jobs = _probe_jobs(tmp_path / "listed", count)
    assert run_local(jobs, count, env, GpuPool.from_environment(env, "auto"), poll_s=0.05) == 0
    assert _devices(jobs) == [str(10 + i) for i in range(count)]
    assert GpuPool.from_environment(env, "cpu").devices == []


def test_local_launcher_order_and_failure(tmp_path, capsys):
    """A job starts only after the jobs it waits for; a failure terminates the running ones."""
    py = sys.executable
    stamp = "import sys, time; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); time.sleep(float(sys.argv[3]))"
    order = tmp_path / "order.txt"
    jobs = [Job("a", [py, "-c", stamp, str(order), "a", "0.5"], tmp_path / "logs", tmp_path),
            Job("b", [py, "-c", stamp, str(order), "b", "0"], tmp_path / "logs", tmp_path),
            Job("c", [py, "-c", stamp, str(order), "c", "0"], tmp_path / "logs", tmp_path)]
    jobs[1].after = [0]
    assert run_local(jobs, 3, dict(__import__("os").environ), GpuPool(0), poll_s=0.05) == 0
    lines = order.read_text().split()
    assert lines.index("a") < lines.index("b")  # b waited for a, c did not need to
    assert lines.index("c") < lines.index("b")
    # failure: exit code returned, the sleeping job stopped, no marker for either
    failing = [Job("slow", [py, "-c", "import time; time.sleep(30)"], tmp_path / "f", tmp_path),
               Job("bad", [py, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "f", tmp_path)]
    assert run_local(failing, 2, dict(__import__("os").environ), GpuPool(0), poll_s=0.05) == 3
    err = capsys.readouterr().err
    assert "error: step bad failed with exit code 3" in err and "boom" in err and "stopped slow" in err
    assert not failing[0].marker.exists() and not failing[1].marker.exists()


def test_slurm_without_submitit_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(SystemExit) as exit_:
        run_all.main(["--launcher", "slurm", "--preset", "smoke", "--results-dir", str(tmp_path / "r")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --launcher slurm needs submitit: pip install submitit\n"


def _submitted(stdout):
    """{(seed, step): (job id, [ids it waits for])} from the submit lines."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"seed (\S+) (\w+): job (\S+)(?:, after (.*))?$", line)
        if m:
            out[(m.group(1), m.group(2))] = (m.group(3), (m.group(4) or "").split())
    return out


def test_slurm_graph_on_submitits_local_executor(tmp_path, data_dir):
    """No srun here: submitit's AutoExecutor picks its local executor, which runs the jobs on this
    machine (run_all then waits for each wave, as that executor has no dependencies)."""
    pytest.importorskip("submitit")
    res, ck = tmp_path / "r", tmp_path / "ck"
    keep = {"train_dense", "prune_magnitude", "plot_results"}
    args = ["--launcher", "slurm", "--preset", "smoke", "--seeds", 0, 1, *TINY_DATA, "--test-subset", 32,
            "--results-dir", res, "--checkpoint-dir", ck, "--plots-dir", tmp_path / "p", "--slurm-time", "00:10:00",
            "--skip", *sorted({s for s, _ in run_all.STEPS} - keep)]
    first = run_script("run_all.py", *args, timeout=300)
    jobs = _submitted(first.stdout)
    assert set(jobs) == {("0", "train_dense"), ("1", "train_dense"), ("0", "prune_magnitude"),
                         ("1", "prune_magnitude"), ("-", "plot_results")}
    assert len({i for i, _ in jobs.values()}) == 5  # five distinct job ids
    for s in ("0", "1"):  # each task waits for its own seed's dense run only
        assert jobs[(s, "train_dense")][1] == []
        assert jobs[(s, "prune_magnitude")][1] == [jobs[(s, "train_dense")][0]]
    assert sorted(jobs[("-", "plot_results")][1]) == sorted(i for k, (i, _) in jobs.items() if k[0] != "-")
    # the jobs ran: every step's results, log and marker
    for s in (0, 1):
        seed_res = res / f"seed_{s}"
        assert (seed_res / "dense" / "summary.json").is_file() and (ck / f"seed_{s}" / "dense" / "init.pt").is_file()
        assert len(list((seed_res / "magnitude").glob("sparsity_*/summary.json"))) == 4
        for step in ("train_dense", "prune_magnitude"):
            assert (seed_res / "logs" / f"{step}.done").is_file()
            assert "===== run_all attempt," in (seed_res / "logs" / f"{step}.log").read_text()
    # (the figures of seed_* trees: asserted once plot_results aggregates)
    assert (res / "logs" / "plot_results.done").is_file() and "plot_results.py" in (res / "logs" / "plot_results.log").read_text()
    assert any((res / "logs" / "slurm").iterdir())  # submitit's own logs
    # everything finished: a second submit submits nothing
    second = run_script("run_all.py", *args, timeout=120)
    assert _submitted(second.stdout) == {} and "0 job(s) to submit, 5 finished" in second.stdout
    # one marker gone: that step alone is resubmitted (a training step's marker would also bring back
    # the steps reading its outputs: test_to_submit_rule)
    (res / "logs" / "plot_results.done").unlink()
    third = run_script("run_all.py", *args, timeout=300)
    assert _submitted(third.stdout).keys() == {("-", "plot_results")} and "1 job(s) to submit, 4 finished" in third.stdout
    assert _submitted(third.stdout)[("-", "plot_results")][1] == []  # its inputs are finished: nothing to wait for
    assert (res / "logs" / "plot_results.done").is_file()
    assert (res / "logs" / "plot_results.log").read_text().count("===== run_all attempt,") == 2


def test_to_submit_rule(tmp_path):
    jobs = link_jobs([Job("train_dense", ["x"], tmp_path / "l0", tmp_path, seed=0),
                      Job("prune_magnitude", ["x"], tmp_path / "l0", tmp_path, seed=0),
                      Job("ticket_transfer", ["x"], tmp_path / "l0", tmp_path, seed=0),
                      Job("plot_results", ["x"], tmp_path, tmp_path)])
    assert to_submit(jobs, force=False) == [0, 1, 2, 3]
    for job in jobs:
        job.marker.parent.mkdir(parents=True, exist_ok=True)
        job.marker.write_text("done\n")
    assert to_submit(jobs, force=False) == [] and to_submit(jobs, force=True) == [0, 1, 2, 3]
    jobs[0].marker.unlink()  # the dense run again: Task 2 and the plots after it, not ticket_transfer
    assert to_submit(jobs, force=False) == [0, 1, 3]


FAKE_SBATCH = """#!/bin/bash
# stands in for Slurm's sbatch: keeps the script, answers like sbatch, runs nothing
n=$(( $(cat "$FAKE_SLURM/count" 2>/dev/null || echo 100) + 1 ))
echo $n > "$FAKE_SLURM/count"
cp "$1" "$FAKE_SLURM/job_$n.sh"
echo "Submitted batch job $n"
"""


def test_slurm_submission_scripts(tmp_path):
    """With Slurm present (fake sbatch/srun on PATH), run_all writes the sbatch scripts with the
    dependencies, the arrays, the resources, and exits at once without running anything."""
    pytest.importorskip("submitit")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sbatch").write_text(FAKE_SBATCH)
    (fake / "srun").write_text("#!/bin/bash\nexit 1\n")
    for f in ("sbatch", "srun"):
        (fake / f).chmod(0o755)
    env = {**__import__("os").environ, "PATH": f"{fake}:{__import__('os').environ['PATH']}", "FAKE_SLURM": str(fake)}
    res = tmp_path / "r"
    cmd = [sys.executable, str(run_all.REPO / "run_all.py"), "--launcher", "slurm", "--preset", "smoke",
           "--seeds", "0", "1", "--results-dir", str(res), "--checkpoint-dir", str(tmp_path / "ck"),
           "--slurm-partition", "gpu", "--slurm-gpus-per-job", "2", "--slurm-time", "90",
           "--slurm-array-parallelism", "3", "--skip", "three_regime", "prune_at_init", "ticket_transfer",
           "earlycrop", "robustness", "deploy"]
    proc = __import__("subprocess").run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=run_all.REPO)
    assert proc.returncode == 0, proc.stderr
    jobs = _submitted(proc.stdout)
    # arrays of the jobs that wait on the same jobs: both dense runs; each seed's three tasks
    assert jobs[("0", "train_dense")] == ("101_0", []) and jobs[("1", "train_dense")] == ("101_1", [])
    for s, array in (("0", "102"), ("1", "103")):
        assert [jobs[(s, step)] for step in ("prune_magnitude", "lottery_imp", "early_bird")] == \
            [(f"{array}_{k}", [f"101_{s}"]) for k in range(3)]
    assert jobs[("-", "plot_results")] == ("104", sorted(f"{a}_{k}" for a, n in (("101", 2), ("102", 3), ("103", 3))
                                                         for k in range(n)))
    assert jobs[("-", "make_report")][1] == sorted(jobs[("-", "plot_results")][1] + ["104"])
    scripts = {n: (fake / f"job_{n}.sh").read_text() for n in range(101, 106)}
    assert "#SBATCH --array=0-1%2" in scripts[101] and "--dependency" not in scripts[101]
    assert "#SBATCH --array=0-2%3" in scripts[102] and "#SBATCH --dependency=afterok:101_0\n" in scripts[102]
    assert "#SBATCH --dependency=afterok:101_1\n" in scripts[103]
    assert all("#SBATCH --kill-on-invalid-dep=yes" in scripts[n] for n in range(102, 106))
    for n in range(101, 104):  # training jobs: the GPUs, the time, the partition
        assert "#SBATCH --gpus-per-node=2" in scripts[n] and "#SBATCH --time=90" in scripts[n]
        assert "#SBATCH --partition=gpu" in scripts[n]
    assert "#SBATCH --gpus-per-node=0" in scripts[104] and "--array" not in scripts[104]
    assert str(res / "logs" / "slurm") in scripts[101]  # submitit's logs
    # nothing ran: no marker, no results; the next submit would submit all again
    assert not list(res.rglob("*.done")) and not (res / "seed_0" / "dense").exists()


def test_slurm_job_wrapper_marks_success_only(tmp_path, capsys):
    """What each Slurm job runs: a failed step leaves no marker (so the next submit resubmits it),
    even where an earlier attempt had succeeded; a successful one writes it; both attempts logged."""
    from utils.launch import job_main
    log, marker = tmp_path / "logs" / "step.log", tmp_path / "logs" / "step.done"
    ok = [sys.executable, "-c", "print('trained')"]
    assert job_main(["--log", str(log), "--marker", str(marker), "--", *ok]) == 0
    assert marker.read_text() == shlex.join(ok) + "\n"
    bad = [sys.executable, "-c", "import sys; print('no dataset'); sys.exit(2)"]
    assert job_main(["--log", str(log), "--marker", str(marker), "--", *bad]) == 2
    assert not marker.exists()
    assert "step failed with exit code 2: no dataset" in capsys.readouterr().err
    text = log.read_text()
    assert text.count("===== run_all attempt,") == 2 and "trained" in text and "no dataset" in text
    job = Job("step", bad, tmp_path / "logs", tmp_path)
    assert to_submit(link_jobs([job]), force=False) == [0]
