"""run_all.py: the presets' commands are consistent with the dense run, user errors are one line,
and (the one slow test) the smoke pipeline runs end to end on the real CIFAR-10 slice, a second
run trains nothing, and deleting one run's results redoes only that run."""
import json
import re
import shlex
import shutil
import time

from conftest import MNIST_DIR, TINY_DATA, assert_user_error, run_script
from test_plots_report import md_table
from utils.io import load_csv

STEPS = ["train_dense", "prune_magnitude", "lottery_imp", "early_bird", "three_regime", "prune_at_init",
         "ticket_transfer", "earlycrop", "robustness", "plot_results", "make_report"]
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
    """{step: (trained, already finished) or None} from the progress lines."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"\[\d+/\d+\] (\w+): done in \d+s,(?: (\d+) runs? trained, (\d+) already finished,)?", line)
        if m:
            out[m.group(1)] = (int(m.group(2)), int(m.group(3))) if m.group(2) else None
    return out


def _stamps(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}


def _files(res, ck):
    """mtimes of every trajectory and trained checkpoint: rewritten only by training (a skipping
    script may still rewrite derived files such as mask.pt)."""
    trained = [*ck.rglob("final.pt"), *(ck / "dense").glob("*.pt")]
    return {p: p.stat().st_mtime_ns for p in [*res.rglob("trajectory.csv"), *trained]}


def test_smoke_pipeline_end_to_end(tmp_path, data_dir):
    """The one slow test: smoke preset from nothing, then again (nothing trained), then with one run's
    results deleted (only that run retrained)."""
    ck, res, plots = tmp_path / "checkpoints", tmp_path / "results", tmp_path / "plots"
    args = ["--preset", "smoke", *TINY_DATA, "--mnist-dir", MNIST_DIR, "--checkpoint-dir", ck, "--results-dir", res,
            "--plots-dir", plots]
    t0 = time.perf_counter()
    first = run_script("run_all.py", *args, "--jobs", 2, timeout=600)
    first_s = time.perf_counter() - t0
    progress = _progress(first.stdout)
    assert set(progress) == set(STEPS)  # one line per step; Tasks 2-4 may finish in any order
    assert progress["train_dense"] == (1, 0) and progress["prune_magnitude"] == (4, 0)  # sparsity 0 (fine-tuned dense) + 50 70 90
    assert progress["early_bird"] == (8, 0) and progress["lottery_imp"][0] >= 6
    assert progress["earlycrop"] == (5, 0)  # crop_u, crop_s, earlycrop_u, earlycrop_s, random_s at 90%
    assert progress["three_regime"] == (8, 0)  # 2 temperatures x 2 densities x 2 copies
    assert progress["prune_at_init"] == (18, 0)  # sparsity 0 + 0.9 x (random + 4 methods x 4 ablations)
    # 2 rounds: imp 2 archs x (3 own + 2 random); 3 experiments x 2 sides x (3 own + 2 moved + 2 random)
    assert progress["ticket_transfer"] == (2 * 5 + 3 * 2 * 7, 0)

    # every results file of the contract
    for f in ["dense/trajectory.csv", "dense/summary.json", "magnitude/summary.csv", "lottery/summary.csv",
              "early_bird/summary.csv", "early_bird/detection.json", "earlycrop/summary.csv",
              "earlycrop/detection.json", "robustness/summary.csv", "prune_at_init/summary.csv",
              "three_regime/epochs/summary.csv", "three_regime/epochs/regimes.json",
              "report.pdf", "report.md", "code.zip"]:
        assert (res / f).is_file(), f
    for s in ("50", "70", "90"):
        assert (res / "magnitude" / f"sparsity_{s}" / "trajectory.csv").is_file()
        assert all((ck / "magnitude" / f"sparsity_{s}" / n).is_file() for n in ("mask.pt", "start.pt", "final.pt"))
        for method in ("oneshot", "imp"):
            assert (res / "lottery" / method / f"sparsity_{s}" / "trajectory.csv").is_file()
    for e in (1, 2, 3, 4):
        assert (ck / "dense" / f"epoch_{e:03d}.pt").is_file()
        for r in ("30", "50"):
            assert (res / "early_bird" / f"epoch_{e:03d}" / f"ratio_{r}" / "trajectory.csv").is_file()
    det = json.loads((res / "early_bird" / "detection.json").read_text())
    assert set(det["ratios"]) == {"0.3", "0.5"} and det["window"] == 2
    for name in ("dense_trajectory", "magnitude_trajectories", "lottery_oneshot_trajectories",
                 "lottery_imp_trajectories", "early_bird_trajectories", "accuracy_vs_sparsity",
                 "early_bird_accuracy", "mask_distance", "early_bird_detector", "robustness",
                 "prune_at_init_ablations", "prune_at_init_layer_density", "three_regime_epochs",
                 "ticket_imp_accuracy", "ticket_imp_trajectories", "ticket_transfer", "earlycrop_accuracy",
                 "earlycrop_detector"):
        assert (plots / f"{name}.png").is_file() and (plots / f"{name}.pdf").is_file(), name

    # the report carries exactly the summaries' numbers
    md = (res / "report.md").read_text()
    _, rows = md_table(md, "magnitude")
    # the 0% row is labelled "0% (dense, fine-tuned)" in the report
    assert [[r[0].split(" (")[0], *r[1:4]] for r in rows] == [[f"{100 * float(r['sparsity']):g}%", f"{float(r['dense_acc']):.2f}",
                                      f"{float(r['pruned_acc']):.2f}", f"{float(r['retrained_acc']):.2f}"]
                                     for r in load_csv(res / "magnitude" / "summary.csv")]
    _, rows = md_table(md, "early_bird")
    eb = sorted(load_csv(res / "early_bird" / "summary.csv"), key=lambda r: (float(r["ratio"]), int(r["ticket_epoch"])))
    assert [(r[0], r[5]) for r in rows] == [(r["ticket_epoch"], f"{float(r['retrained_acc']):.2f}") for r in eb]
    dense = json.loads((res / "dense" / "summary.json").read_text())
    assert f"Original (dense) ResNet-20: {dense['test_acc']:.2f}% test accuracy after 4 epochs" in md

    # a second run trains nothing: no summary, trajectory or trained checkpoint is rewritten
    stamps, files = _stamps(res), _files(res, ck)
    t0 = time.perf_counter()
    # (plots and report were checked above; they read results only, so the second run leaves them out)
    second = run_script("run_all.py", *args, "--jobs", 2, "--skip", "plot_results", "make_report", timeout=600)
    second_s = time.perf_counter() - t0
    progress = _progress(second.stdout)
    for step in TRAINING:
        assert progress[step][0] == 0, (step, progress[step])
    assert _stamps(res) == stamps and _files(res, ck) == files
    # only start-up and skip checks (a wall-clock bound: CPU load from other processes makes a
    # ratio to the first run unreliable)
    assert second_s < 150, (second_s, first_s)

    # deleting one run's results redoes that run only
    shutil.rmtree(res / "magnitude" / "sparsity_70")
    third = run_script("run_all.py", *args, "--skip", "robustness", "plot_results", "make_report", timeout=300)
    progress = _progress(third.stdout)
    assert progress["prune_magnitude"] == (1, 3)
    assert all(progress[s][0] == 0 for s in ("train_dense", "lottery_imp", "early_bird", "three_regime", "prune_at_init",
                                                "earlycrop"))
    after = _stamps(res)
    changed = {p for p in after if stamps.get(p) != after[p]}
    assert changed == {res / "magnitude" / "sparsity_70" / "summary.json"}
