"""A training run started on a quiet machine, then a second one started beside it: does each keep
within 1.5x of its fair share (utils/pace.py switches the first to passive OpenMP waiting)?

    python bench/late_neighbour.py --data-dir ../shared/data/cifar10 --epochs 30 --milestones 15 23 \\
        --quiet-epochs 3 --neighbour-epochs 10

Run it on an otherwise quiet machine, with no OMP_WAIT_POLICY, GOMP_SPINCOUNT or OMP_NUM_THREADS
set (the first run must start spinning, with every core). It starts `train_dense.py` (the first
run) in a scratch folder, waits for --quiet-epochs of its epochs (its quiet pace: the median of
those epochs), starts a second `train_dense.py` (seed 1, --neighbour-epochs epochs) beside it, and
waits for both. The epochs' end times are taken by watching each run's trajectory.csv, so every
epoch is placed in time; an epoch counts as "beside" the other run when it lies wholly within the
other's life. Fair share on C cores with two runs of C threads: 2x the quiet epoch (the second run
does the same work per epoch, so the first run's quiet epoch is its reference too). Prints, and
writes as JSON (--out): the quiet epoch, the first run's epochs beside the second before and after
its switch (and the epoch it switched after, from its output), the second run's epochs, each as a
multiple of the fair share, and whether every median after the switch is within --tolerance of it.
"""
import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWITCH_MARK = "switching to passive OpenMP waiting"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="CIFAR-10 root (as train_dense.py's)")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the first run")
    p.add_argument("--milestones", type=int, nargs="*", default=[15, 23], help="its learning-rate milestones")
    p.add_argument("--quiet-epochs", type=int, default=3, help="epochs of the first run before the second starts")
    p.add_argument("--neighbour-epochs", type=int, default=10, help="epochs of the second run")
    p.add_argument("--tolerance", type=float, default=1.5, help="allowed multiple of the fair share")
    p.add_argument("--work-dir", default=None, help="scratch folder for both runs (default: a new temporary one, removed)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


class Watched:
    """One train_dense.py process and the wall-clock end of each epoch, from its trajectory.csv."""

    def __init__(self, name, args, work, seed, epochs):
        self.results = work / name / "r"
        cmd = [sys.executable, str(REPO / "train_dense.py"), "--data-dir", args.data_dir, "--no-download",
               "--device", "cpu", "--train-subset", str(args.train_subset), "--test-subset", str(args.test_subset),
               "--epochs", str(epochs), "--milestones", *map(str, [m for m in args.milestones if m < epochs]),
               "--save-epochs", str(epochs), "--seed", str(seed),
               "--checkpoint-dir", str(work / name / "c"), "--results-dir", str(self.results)]
        self.log = open(work / f"{name}.log", "w")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        self.ends, self.seconds, self.finished = {}, {}, None

    def poll(self):
        path = self.results / "dense" / "trajectory.csv"
        if path.is_file():
            try:
                rows = list(csv.DictReader(open(path, newline="")))
            except (OSError, csv.Error):
                rows = []
            now = time.monotonic()
            for r in rows:
                epoch = int(float(r["epoch"]))
                if epoch > 0 and epoch not in self.ends:
                    self.ends[epoch], self.seconds[epoch] = now, float(r["seconds"])
        if self.finished is None and self.proc.poll() is not None:
            self.finished = time.monotonic()
        return self.finished is not None

    def epochs_within(self, start, end):
        """Epoch seconds of the epochs that lie wholly within [start, end]."""
        return {e: s for e, s in self.seconds.items() if self.ends[e] - s >= start and self.ends[e] <= end}

    def output(self):
        self.log.flush()
        return Path(self.log.name).read_text()


def main(argv=None):
    args = parse_args(argv)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        if name in os.environ:
            print(f"warning: {name}={os.environ[name]} is set; the first run should start as a user's would "
                  "(spinning, every core): unset it", file=sys.stderr)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="late_neighbour_"))
    first = Watched("first", args, work, 0, args.epochs)
    while len(first.ends) < args.quiet_epochs and not first.poll():
        time.sleep(0.2)
    quiet = statistics.median(first.seconds[e] for e in range(1, args.quiet_epochs + 1))
    second = Watched("second", args, work, 1, args.neighbour_epochs)
    while not (first.poll() & second.poll()):
        time.sleep(0.2)
    for run in (first, second):
        if run.proc.returncode != 0:
            sys.exit(f"{'first' if run is first else 'second'} run failed ({run.proc.returncode}); see {run.log.name}")

    out = first.output()
    switched = None
    for line in out.splitlines():
        if SWITCH_MARK in line:
            switched = int(line.split("epoch ", 1)[1].split()[0])
    fair = 2 * quiet
    beside = first.epochs_within(second.start, second.finished)
    before = {e: s for e, s in beside.items() if switched is None or e <= switched}
    after = {e: s for e, s in beside.items() if switched is not None and e > switched}
    neighbour = second.epochs_within(first.start, first.finished)

    def summary(epochs):
        if not epochs:
            return None
        med = statistics.median(epochs.values())
        return {"epochs": sorted(epochs), "seconds": [round(epochs[e], 2) for e in sorted(epochs)],
                "median_s": round(med, 2), "x_fair_share": round(med / fair, 2)}

    figures = {"cpu": cpu_name(), "cores": os.cpu_count(), "quiet_epoch_s": round(quiet, 2),
               "fair_share_epoch_s": round(fair, 2), "switched_after_epoch": switched,
               "first_beside_second_before_switch": summary(before),
               "first_beside_second_after_switch": summary(after),
               "second_beside_first": summary(neighbour)}
    checked = [figures[k] for k in ("first_beside_second_after_switch", "second_beside_first") if figures[k]]
    figures["within_tolerance"] = bool(checked) and all(f["x_fair_share"] <= args.tolerance for f in checked)
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
