"""run_all.py: the presets' commands are consistent with the dense run, user errors are one line,
and (the one slow test) the smoke pipeline with two seeds runs end to end on the real CIFAR-10
slice, a second run trains, scores, evaluates and draws nothing and rewrites no file, and
deleting one run's results redoes only that run. The
launchers themselves (seed layout, dependencies, GPUs, Slurm): tests/test_launch.py."""
import hashlib
import json
import re
import shlex
import shutil
import statistics
import time

import pytest
import torch

from conftest import MNIST_DIR, TINY_DATA, assert_user_error, run_script
from utils.io import load_csv
from utils.leaderboard import Leaderboard
from utils.plots.common import Results

STEPS = ["train_dense", "prune_magnitude", "lottery_imp", "early_bird", "three_regime", "prune_at_init",
         "ticket_transfer", "earlycrop", "robustness", "deploy", "plot_results", "make_report"]
TRAINING = STEPS[:STEPS.index("robustness")]  # the training steps before robustness


def dry_run(*args):
    out = run_script("run_all.py", "--dry-run", *args).stdout
    cmds = {}
    for line in out.splitlines():
        step, cmd = line.split(": ", 1)
        cmds[step] = shlex.split(cmd)
    return cmds


def flag(argv, name):
    """The values after `name` in argv, up to the next flag."""
    i = argv.index(name)
    values = []
    for a in argv[i + 1:]:
        if a.startswith("--"):
            break
        values.append(a)
    return values


def test_presets_are_consistent_with_the_dense_run(tmp_path):
    ck = tmp_path / "ck"
    for preset, last in (("smoke", 4), ("quick", 32)):
        cmds = dry_run("--preset", preset, "--checkpoint-dir", ck, "--results-dir", tmp_path / "r")
        assert list(cmds) == STEPS
        dense = cmds["train_dense"]
        assert flag(dense, "--epochs") == [str(last)]
        saved = {int(e) for e in flag(dense, "--save-epochs")} | {last}
        tickets = {int(e) for e in flag(cmds["early_bird"], "--ticket-epochs")}
        assert len(tickets) == 4 and tickets <= saved  # every ticket epoch has a checkpoint
        assert flag(cmds["prune_magnitude"], "--from") == [str(ck / "dense" / f"epoch_{last:03d}.pt")]
        assert flag(cmds["lottery_imp"], "--from") == [str(ck / "dense" / f"epoch_{last:03d}.pt")]
        assert flag(cmds["lottery_imp"], "--rewind") == [str(ck / "dense" / "init.pt")]
        assert flag(cmds["early_bird"], "--dense-run") == [str(ck / "dense")]
        for step in TRAINING:  # the common flags reach every training script
            assert flag(cmds[step], "--checkpoint-dir") == [str(ck)]
            assert flag(cmds[step], "--results-dir") == [str(tmp_path / "r")]
        assert flag(cmds["plot_results"], "--results-dir") == [str(tmp_path / "r")]
        assert flag(cmds["ticket_transfer"], "--epochs") == (["1"] if preset == "smoke" else ["10"])
        assert flag(cmds["ticket_transfer"], "--rounds") == ["2"] if preset == "smoke" else \
            "--rounds" not in cmds["ticket_transfer"]
    # full = the assignment as written: the scripts' own defaults, only the paths spelled out
    cmds = dry_run("--preset", "full")
    assert "--epochs" not in cmds["train_dense"] and "--ticket-epochs" not in cmds["early_bird"]
    assert flag(cmds["lottery_imp"], "--from") == ["checkpoints/dense/epoch_160.pt"]
    # the user's flags win over the preset's and are passed on
    cmds = dry_run("--preset", "smoke", "--train-subset", 100, "--seed", 3, "--force", "--device", "cpu")
    for step in TRAINING:
        assert flag(cmds[step], "--train-subset") == ["100"] and flag(cmds[step], "--test-subset") == ["64"]
        assert flag(cmds[step], "--seed") == ["3"] and "--force" in cmds[step]
    assert "--force" not in cmds["plot_results"] and "--force" not in cmds["make_report"]
    # MNIST's root: --mnist-dir, else --data-dir
    cmds = dry_run("--data-dir", "/c", "--mnist-dir", "/m")
    assert flag(cmds["ticket_transfer"], "--data-dir") == ["/m"] and flag(cmds["train_dense"], "--data-dir") == ["/c"]
    assert flag(dry_run("--data-dir", "/c")["ticket_transfer"], "--data-dir") == ["/c"]
    assert "--epochs" not in dry_run("--preset", "full")["ticket_transfer"]


def test_user_errors_are_one_line():
    assert_user_error(run_script("run_all.py", "--jobs", 0, check=False), "--jobs")
    assert_user_error(run_script("run_all.py", "--skip", "bogus", check=False), "bogus", "train_dense")
    assert_user_error(run_script("run_all.py", "--preset", "huge", check=False), "--preset")


def test_failing_step_stops_with_its_exit_code(tmp_path):
    # no dataset: train_dense fails with its user error (exit 2); nothing after it runs
    proc = run_script("run_all.py", "--preset", "smoke", "--data-dir", tmp_path / "nodata", "--no-download",
                      "--results-dir", tmp_path / "r", "--checkpoint-dir", tmp_path / "ck", check=False)
    assert proc.returncode == 2
    assert "error: step train_dense failed with exit code 2" in proc.stderr
    assert "CIFAR-10 not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "r" / "logs").iterdir()) == ["train_dense.log"]


def _progress(stdout):
    """{(step, seed or None): (trained, already finished) or None} from the progress lines."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"\[\d+/\d+\] (\w+)(?: \(seed (\d+)\))?: done in \d+s,(?: (\d+) runs? trained, (\d+) already finished,)?",
                     line)
        if m:
            seed = int(m.group(2)) if m.group(2) else None
            out[(m.group(1), seed)] = (int(m.group(3)), int(m.group(4))) if m.group(3) else None
    return out


def _stamps(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}


def _files(*roots):
    """(mtime, SHA-256) of every file under `roots`, the logs aside."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for root in roots
            for p in root.rglob("*") if p.is_file() and "logs" not in p.relative_to(root).parts}


def _check_deploy(seed_results):
    """deploy.py's table of one seed: a row with latency at batch 1 and 128, peak memory and disk for
    every leaderboard row; compact networks smaller on disk than dense and no slower at batch 128;
    a 90% ticket's CSR file at most a third of the dense file."""
    rows = load_csv(seed_results / "deploy" / "summary.csv")
    entries = Leaderboard(Results(seed_results)).entries
    assert len(entries) >= 25  # dense, Tasks 2-4, pruning at init, EarlyCroP
    for e in entries:
        timed = [r for r in rows if r["source"] == e.run_summary and r["latency_ms_b128"]]
        assert timed, e.method
        assert all(float(r[c]) > 0 for r in timed for c in ("latency_ms_b1", "latency_ms_b128", "peak_mem_mb", "disk_mb"))
    dense = next(r for r in rows if r["form"] == "dense" and r["device"] == "cpu")
    compact = [r for r in rows if r["form"] == "compact" and r["device"] == "cpu"]
    assert len(compact) >= 9  # Early-Bird's 8 and the channel-pruned EarlyCroP rows
    for r in compact:
        assert float(r["disk_mb"]) < float(dense["disk_mb"])
        # timed in turns with the dense network, one pass on a shared CPU: a generous margin here
        # (bench/deploy.py checks "no slower" strictly on a quiet machine)
        assert float(r["latency_ms_b128"]) < 2 * float(r["dense_latency_ms_b128"]), r
    tickets = [r for r in rows if r["form"] == "sparse_csr" and abs(float(r["sparsity"]) - 0.9) < 1e-6]
    assert tickets and all(float(r["disk_mb"]) <= float(dense["disk_mb"]) / 3 for r in tickets)


def test_smoke_pipeline_two_seeds_end_to_end(tmp_path, data_dir):
    """The one slow test: smoke preset with two seeds from nothing (two complete replicates, seeds
    side by side), then again (nothing trained, no file rewritten), then with one run's results deleted (only that run
    retrained)."""
    ck, res, plots = tmp_path / "checkpoints", tmp_path / "results", tmp_path / "plots"
    args = ["--preset", "smoke", "--seeds", 0, 1, *TINY_DATA, "--mnist-dir", MNIST_DIR, "--checkpoint-dir", ck,
            "--results-dir", res, "--plots-dir", plots]
    t0 = time.perf_counter()
    first = run_script("run_all.py", *args, "--jobs", 2, timeout=900)
    first_s = time.perf_counter() - t0
    progress = _progress(first.stdout)
    # one line per (step, seed); plots and report once, over both seeds
    assert set(progress) == {(s, seed) for s in TRAINING + ["robustness", "deploy"] for seed in (0, 1)} | \
        {("plot_results", None), ("make_report", None)}
    for seed in (0, 1):
        p = {step: progress[(step, seed)] for step in TRAINING}
        assert p["train_dense"] == (1, 0) and p["prune_magnitude"] == (4, 0)  # sparsity 0 (fine-tuned dense) + 50 70 90
        assert p["early_bird"] == (8, 0) and p["lottery_imp"][0] >= 6
        assert p["earlycrop"] == (5, 0)  # crop_u, crop_s, earlycrop_u, earlycrop_s, random_s at 90%
        assert p["three_regime"] == (8, 0)  # 2 temperatures x 2 densities x 2 copies
        assert p["prune_at_init"] == (18, 0)  # sparsity 0 + 0.9 x (random + 4 methods x 4 ablations)
        # 2 rounds: imp 2 archs x (3 own + 2 random); 3 experiments x 2 sides x (3 own + 2 moved + 2 random)
        assert p["ticket_transfer"] == (2 * 5 + 3 * 2 * 7, 0)

    # two complete replicate trees: every results file of the contract, in each seed's folders
    for seed in (0, 1):
        r, c = res / f"seed_{seed}", ck / f"seed_{seed}"
        for f in ["dense/trajectory.csv", "dense/summary.json", "magnitude/summary.csv", "lottery/summary.csv",
                  "early_bird/summary.csv", "early_bird/detection.json", "earlycrop/summary.csv",
                  "earlycrop/detection.json", "robustness/summary.csv", "prune_at_init/summary.csv",
                  "three_regime/epochs/summary.csv", "three_regime/epochs/regimes.json",
                  "ticket_transfer/summary.csv"]:
            assert (r / f).is_file(), (seed, f)
        assert json.loads((r / "dense" / "summary.json").read_text())["config"]["seed"] == seed
        for s in ("50", "70", "90"):
            assert (r / "magnitude" / f"sparsity_{s}" / "trajectory.csv").is_file()
            assert all((c / "magnitude" / f"sparsity_{s}" / n).is_file() for n in ("mask.pt", "start.pt", "final.pt"))
            for method in ("oneshot", "imp"):
                assert (r / "lottery" / method / f"sparsity_{s}" / "trajectory.csv").is_file()
        for e in (1, 2, 3, 4):
            assert (c / "dense" / f"epoch_{e:03d}.pt").is_file()
            for ratio in ("30", "50"):
                assert (r / "early_bird" / f"epoch_{e:03d}" / f"ratio_{ratio}" / "trajectory.csv").is_file()
        det = json.loads((r / "early_bird" / "detection.json").read_text())
        assert set(det["ratios"]) == {"0.3", "0.5"} and det["window"] == 2
        for step in TRAINING + ["robustness", "deploy"]:
            assert (r / "logs" / f"{step}.log").is_file() and (r / "logs" / f"{step}.done").is_file()
        _check_deploy(r)
    # nothing of a single-seed layout at the top level: only the seeds, the logs, the report and
    # one aggregate.csv per task folder
    assert not (ck / "dense").exists()
    for folder in (p for p in res.iterdir() if p.is_dir() and p.name != "logs" and not p.name.startswith("seed_")):
        assert [f.name for f in folder.iterdir()] == ["aggregate.csv"], folder
    assert sorted(p.name for p in (res / "logs").iterdir()) == ["make_report.done", "make_report.log",
                                                               "plot_results.done", "plot_results.log"]
    # the two replicates are different networks from the first weight on
    inits = [torch.load(ck / f"seed_{s}" / "dense" / "init.pt", map_location="cpu", weights_only=False)["model"]
             for s in (0, 1)]
    assert inits[0].keys() == inits[1].keys()
    assert not torch.equal(inits[0]["conv1.weight"], inits[1]["conv1.weight"])
    for f in ("report.pdf", "report.md", "code.zip"):  # plots and report: once, over the top-level folder
        assert (res / f).is_file(), f
    # aggregate.csv per task, equal to a recomputation from the two seeds' own files
    lottery = [load_csv(res / f"seed_{seed}" / "lottery" / "summary.csv") for seed in (0, 1)]
    agg = {(r["method"], r["sparsity"], r["round"], r["column"]): r for r in load_csv(res / "lottery" / "aggregate.csv")}
    for a, b in zip(*lottery):
        assert (a["method"], a["sparsity"], a["round"]) == (b["method"], b["sparsity"], b["round"])
        for column in ("ticket_acc", "retrained_acc"):
            row = agg[(a["method"], a["sparsity"], a["round"], column)]
            values = [float(a[column]), float(b[column])]
            assert float(row["mean"]) == pytest.approx(statistics.fmean(values), rel=1e-5, abs=1e-6)
            assert float(row["std"]) == pytest.approx(statistics.stdev(values), rel=1e-5, abs=1e-6)
            assert row["n"] == "2"
    dense = {r["column"]: r for r in load_csv(res / "dense" / "aggregate.csv")}
    accs = [json.loads((res / f"seed_{seed}" / "dense" / "summary.json").read_text())["test_acc"] for seed in (0, 1)]
    assert float(dense["test_acc"]["mean"]) == pytest.approx(statistics.fmean(accs), rel=1e-5)
    for task in ("magnitude", "early_bird", "prune_at_init", "earlycrop", "robustness", "ticket_transfer"):
        assert (res / task / "aggregate.csv").is_file(), task
    assert {"accuracy_vs_sparsity.png", "leaderboard_accuracy_vs_sparsity.png",
            "leaderboard_accuracy_vs_cost.png", "deploy_accuracy_vs_latency.png"} <= {p.name for p in plots.glob("*.png")}
    report = (res / "report.md").read_text()
    assert "n = 2" in report and "|Δ| > 2·se" in report
    assert "# Deployed: does pruning make the network faster or smaller?" in report

    # a second run trains, scores, times and draws nothing: no file under checkpoints/, results/
    # (logs aside) or plots/ is rewritten
    stamps, files = _stamps(res), _files(res, ck, plots)
    t0 = time.perf_counter()
    second = run_script("run_all.py", *args, "--jobs", 2, timeout=600)
    second_s = time.perf_counter() - t0
    progress = _progress(second.stdout)
    assert len(progress) == 2 * (len(TRAINING) + 2) + 2  # robustness, deploy; plots, report
    for (step, seed), counts in progress.items():
        if step not in ("robustness", "plot_results", "make_report"):  # (no runs of their own)
            assert counts[0] == 0 and counts[1] > 0, (step, seed, counts)
    after = _files(res, ck, plots)
    changed = sorted(str(p) for p in set(files) | set(after) if files.get(p) != after.get(p))
    assert not changed, "rewritten by the rerun:\n" + "\n".join(changed)
    assert "up to date" in (res / "logs" / "make_report.log").read_text()
    # only start-up and skip checks (a wall-clock bound: CPU load from other processes makes a
    # ratio to the first run unreliable)
    assert second_s < 200, (second_s, first_s)

    # deleting one run's results redoes that run only, in that seed only
    shutil.rmtree(res / "seed_1" / "magnitude" / "sparsity_70")
    third = run_script("run_all.py", *args, "--jobs", 2, "--skip", *[s for s in STEPS if s != "prune_magnitude"],
                       timeout=300)
    assert _progress(third.stdout) == {("prune_magnitude", 0): (0, 4), ("prune_magnitude", 1): (1, 3)}
    after = _stamps(res)
    changed = {p for p in after if stamps.get(p) != after[p]}
    assert changed == {res / "seed_1" / "magnitude" / "sparsity_70" / "summary.json"}
