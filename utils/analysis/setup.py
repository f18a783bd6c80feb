"""The report's opening: what was run, with which recipe, on what, and how long it took."""
import os
import platform

from utils.analysis.common import (MATCH_POINTS, NOT_TESTABLE, Claim, acc, acc_sd, arch_label, hms, not_run, threshold,
                                   verdict_of, verdict_table, within_says)
from utils.document import Table
from utils.noise import seed_note
from utils.plots.common import read_csv

RECIPE_COLUMNS = ["run", "epochs", "batch", "lr", "momentum", "weight decay", "milestones",
                  "train images", "test images"]
TASKS = [("dense", "Step 1: dense training"), ("magnitude", "Task 2: magnitude retraining"),
         ("lottery", "Task 3: ticket training"), ("early_bird", "Task 4: Early-Bird retraining"),
         ("robustness", "Bonus: robustness")]


def recipe_row(name, cfg):
    def images(n):
        return "all" if not n else f"{int(n):,}"
    return [name, str(cfg.get("epochs", "?")), str(cfg.get("batch_size", "?")), f"{cfg.get('lr', '?')}",
            f"{cfg.get('momentum', '?')}", f"{cfg.get('weight_decay', '?')}",
            " ".join(str(m) for m in cfg.get("milestones", [])) or "none",
            images(cfg.get("train_subset")), images(cfg.get("test_subset"))]


def trajectory_seconds(res, task):
    """Wall-clock seconds of every epoch row of every trajectory under results/<task>/, summed
    over the seeds' replicates (the time all of them took)."""
    def one(rep):
        paths = rep.path(task).rglob("trajectory.csv") if rep.path(task).is_dir() else []
        return sum(row.get("seconds") or 0.0 for p in paths for row in read_csv(p))
    return sum(res.per_seed(one))


def seeds_text(res, cfg):
    """'seed 0', or 'seeds 0, 1, 2: one complete replicate each' for a multi-seed results folder."""
    if res.multi_seed:
        return f"seeds {', '.join(map(str, res.seeds))}: one complete replicate each"
    return f"seed {cfg.get('seed', '?')}"


def title(res):
    return f"Drawing Early-Bird tickets: pruning {arch_label(res)} on CIFAR-10"


def section(doc, res):
    dense = res.dense_summary
    arch = arch_label(res)
    doc.h1(title(res))
    doc.p("Every table and number below is computed from the files in the results folder when this "
          "report is made (python make_report.py); the figures are the ones plot_results.py writes.")
    if dense:
        doc.p(f"Original (dense) {arch}: {acc_sd(dense, 'test_acc')}% test accuracy after {dense['epochs']:g} "
              f"epochs ({int(dense.get('params', 0)):,} parameters).")
    doc.h1("Experimental set-up")
    if dense:
        cfg = dense.get("config", {})
        doc.p(f"Network: {cfg.get('arch', 'resnet20')} (shortcut option {cfg.get('shortcut', '?')}), "
              f"{int(dense.get('params', 0)):,} parameters, trained from a seeded initialisation ("
              f"{seeds_text(res, cfg)}) with SGD, a step learning-rate schedule (x0.1 after each "
              f"milestone), random crop (padding 4) and horizontal flip; the network-slimming L1 "
              f"penalty on BatchNorm scales was {cfg.get('bn_l1', 0)}. Accuracies are on the CIFAR-10 "
              f"test images used ({'all' if not cfg.get('test_subset') else cfg['test_subset']}).")
    else:
        doc.p("No dense run found (results/dense/summary.json): run python train_dense.py.")
    doc.p(seed_note(res.seeds))
    rows, devices = [], set()
    for task, name in TASKS:
        runs = res.runs(task)
        for summary in runs.values():
            if summary.get("device"):
                devices.add(summary["device"])
        if runs:
            first = next(iter(runs.values()))
            rows.append(recipe_row(f"{name} ({len(runs)} run{'s' * (len(runs) != 1)})", first.get("config", {})))
    if rows:
        doc.table(Table("recipes", "Training recipes, read from each task's summary.json (first run shown)",
                        RECIPE_COLUMNS, rows))
    times = [(name, trajectory_seconds(res, task)) for task, name in TASKS]
    times = [(n, s) for n, s in times if s > 0]
    if times:
        rows = [[n, hms(s), f"{s:.0f}"] for n, s in times]
        total = sum(s for _, s in times)
        rows.append(["total", hms(total), f"{total:.0f}"])
        doc.table(Table("time", "Time taken: the sum of the trajectories' per-epoch seconds "
                        "(training and evaluation)"
                        + (f", all {len(res.seeds)} seeds together" if res.multi_seed else ""),
                        ["step", "time", "seconds"], rows))
    host = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    doc.p(f"Hardware: the runs report device(s) {', '.join(sorted(devices)) or 'unknown'}; this report "
          f"was assembled on {host}.")
    doc.h2("Dense training trajectory (Step 1 of every task)")
    doc.figure("dense_trajectory")
    verdict_table(doc, "dense", claims(res))


HE_ACC = 91.25  # He et al. 2016, Table 6: ResNet-20, 8.75% test error on CIFAR-10
HE_EPOCHS = 160  # their 64k iterations at batch 128 are about 180 epochs; the assignment's schedule is 160


def claims(res):
    """The dense baseline against He et al. 2016, testable only at the paper's scale (ResNet-20,
    all training images, the full schedule)."""
    claim = f"ResNet-20 reaches {HE_ACC:g}% test accuracy on CIFAR-10 (8.75% error)"
    source = "He et al. 2016, Section 4.2, Table 6"
    dense = res.dense_summary
    if not dense:
        return [not_run(claim, source, "python train_dense.py")]
    cfg = dense.get("config", {})
    per_seed = res.per_seed(lambda rep: (rep.dense_summary or {}).get("test_acc"))
    at = threshold(per_seed, [HE_ACC] * len(per_seed), MATCH_POINTS)
    epochs = dense.get("epochs") or 0
    measured = (f"{acc(dense.get('test_acc'))}% ({cfg.get('arch', '?')}, {epochs:g} epochs, "
                f"{'all' if not cfg.get('train_subset') else cfg['train_subset']} training images); "
                f"against {HE_ACC:g}%: {within_says(at)}")
    full = cfg.get("arch", "resnet20") == "resnet20" and not cfg.get("train_subset") and \
        epochs >= HE_EPOCHS
    return [Claim(claim, source, measured if full else measured + f"; fewer than {HE_EPOCHS} epochs or a subset",
                  verdict_of(at) if full else NOT_TESTABLE)]
