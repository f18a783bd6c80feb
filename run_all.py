"""The whole assignment in one command: dense training, Tasks 2-4, robustness, plots, report.

    python run_all.py --preset full              # the assignment as written (GPU: about a day)
    python run_all.py --preset quick --jobs 3    # every schedule at 1/5: about 1/7 of the training epochs
    python run_all.py --preset smoke             # a few minutes on a laptop CPU: checks the plumbing

Each step runs the real entry script as a subprocess with the preset's flags; finished runs are
skipped and interrupted ones resume (the scripts do that themselves), so running the same
command again only does what is missing. Every step's output is appended to
<results-dir>/logs/<step>.log under a header per attempt (a failed attempt's log is kept) and
one progress line per step is printed. `--jobs N` runs Tasks 2, 3 and 4, three_regime and
prune_at_init (independent once the dense run exists) and ticket_transfer (MNIST tickets,
independent of everything) in N processes at once. A failing step stops the pipeline with its exit code.
"""
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from utils.config import make_parser
from utils.errors import UserError, cli_main

REPO = Path(__file__).resolve().parent
# (step, the folder under results/ whose summary.json files are its runs)
STEPS = [("train_dense", "dense"), ("prune_magnitude", "magnitude"), ("lottery_imp", "lottery"),
         ("early_bird", "early_bird"), ("three_regime", "three_regime"), ("prune_at_init", "prune_at_init"),
         ("ticket_transfer", "ticket_transfer"), ("earlycrop", "earlycrop"), ("robustness", "robustness"),
         ("plot_results", None), ("make_report", None)]
# Steps that only need the dense run (ticket_transfer: nothing), so --jobs may run them side by side.
PARALLEL = {"prune_magnitude", "lottery_imp", "early_bird", "three_regime", "prune_at_init", "ticket_transfer"}
TRAINING_STEPS = {s for s, folder in STEPS if folder}
ATTEMPT_MARK = "===== run_all attempt,"  # starts the header line of each attempt in a step's log


def preset_flags(preset, checkpoint_dir):
    """{step: flags} for a preset. Ticket epochs, --from and --rewind always name checkpoints the
    preset's dense run saves, so every later step finds its inputs."""
    dense_dir = Path(checkpoint_dir) / "dense"
    if preset == "full":  # the assignment as written: every script's defaults
        dense, last, tickets = [], 160, None
        mag = lot = eb = rob = pai = ec = tr = tt = []
        subsets = []
    elif preset == "quick":  # every schedule at 1/5: 32 dense epochs, tickets at 2 6 10 20
        last, tickets = 32, [2, 6, 10, 20]
        dense = ["--epochs", last, "--milestones", 16, 24, "--save-epochs", *tickets, last]
        retrain = ["--epochs", 32, "--milestones", 16, 24]
        mag = ["--epochs", 8, "--milestones", 4]  # 1/5 of the 40-epoch fine-tuning
        lot = retrain + ["--imp-rate", 0.5]  # 4 IMP rounds (50, 70, 85, 90%) instead of 12
        eb = pai = retrain
        ec = retrain + ["--prune-by", 20]
        rob = retrain + ["--eval-subset", 1000, "--monitor-subset", 500, "--train-steps", 3]
        tr = ["--temperatures", *tickets, last, "--epochs", 32, "--milestones", 16, 24]
        tt = ["--epochs", 10]  # MNIST tickets: the table's rounds, 10 epochs per run
        subsets = []
    elif preset == "smoke":  # tiny real subsets, 1 epoch per retraining: minutes on 2 CPU cores
        last, tickets = 4, [1, 2, 3, 4]
        dense = ["--epochs", last, "--milestones", 3, "--save-epochs", *tickets]
        retrain = ["--epochs", 1, "--milestones"]
        mag = retrain
        lot = retrain + ["--imp-rate", 0.5]
        # window 2, so the detector can fire within 4 dense epochs
        eb = retrain + ["--eb-window", 2, "--speed-batch", 8, "--speed-repeats", 1]
        ec = retrain + ["--sparsities", 0.9, "--crop-batches", 1, "--timing-steps", 1]
        pai = retrain + ["--sparsities", 0, 0.9, "--score-per-class", 2]
        rob = retrain + ["--experiments", "evaluate", "--eval-subset", 32, "--eval-steps", 2, "--monitor-subset", 32]
        tr = ["--temperatures", 2, 4, "--densities", 0.1, 0.5, "--epochs", 1]
        tt = ["--epochs", 1, "--rounds", 2]
        subsets = ["--train-subset", 64, "--test-subset", 64]
    else:
        raise UserError(f"unknown --preset {preset!r}; choose full, quick or smoke")
    ticket_flags = ["--ticket-epochs", *tickets] if tickets else []
    flags = {
        "train_dense": dense,
        "prune_magnitude": mag + ["--from", dense_dir / f"epoch_{last:03d}.pt"],
        "lottery_imp": lot + ["--from", dense_dir / f"epoch_{last:03d}.pt", "--rewind", dense_dir / "init.pt"],
        "early_bird": eb + ticket_flags + ["--dense-run", dense_dir],
        "three_regime": tr + ["--dense-run", dense_dir],
        "prune_at_init": pai + ["--init", dense_dir / "init.pt"],
        "earlycrop": ec + ["--dense-run", dense_dir],
        "ticket_transfer": tt,
        "robustness": rob,
    }
    return {step: [str(a) for a in f] for step, f in flags.items()}, [str(a) for a in subsets]


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=("full", "quick", "smoke"),
                        help="full: the assignment as written; quick: every schedule at 1/5, about 1/7 of "
                             "the training epochs; smoke: minutes on a CPU")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run Tasks 2, 3, 4, three_regime, prune_at_init and ticket_transfer in up to N "
                             "processes at once")
    parser.add_argument("--plots-dir", default="plots", help="where plot_results.py writes the figures")
    parser.add_argument("--skip", nargs="*", default=[], metavar="STEP",
                        help=f"steps to leave out, of: {', '.join(s for s, _ in STEPS)}")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    # The flags every entry script takes, passed on; None = the preset's or the script's default.
    common = parser.add_argument_group("passed on to every training script")
    common.add_argument("--data-dir", default=None, help="CIFAR-10 root (default: data)")
    common.add_argument("--mnist-dir", default=None,
                        help="MNIST root holding MNIST/raw/, for ticket_transfer (default: --data-dir)")
    common.add_argument("--no-download", action="store_true", help="never touch the network")
    common.add_argument("--train-subset", type=int, default=None, help="first N training images (0 = all)")
    common.add_argument("--test-subset", type=int, default=None, help="first N test images (0 = all)")
    common.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default: auto")
    common.add_argument("--seed", type=int, default=None, help="default: 0")
    common.add_argument("--checkpoint-dir", default="checkpoints", help="where .pt files go")
    common.add_argument("--results-dir", default="results", help="where CSV / JSON (and the report) go")
    common.add_argument("--force", action="store_true", help="redo finished runs")
    common.add_argument("--deterministic", action="store_true",
                        help="deterministic cuDNN kernels: bit-identical reruns on a GPU, slower")
    return parser.parse_args(argv)


def common_flags(args, preset_subsets, data_dir=None):
    flags = []
    for name in ("data_dir", "device", "seed"):
        value = data_dir if name == "data_dir" and data_dir is not None else getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    subsets = dict(zip(preset_subsets[::2], preset_subsets[1::2]))
    for name in ("train_subset", "test_subset"):
        flag = f"--{name.replace('_', '-')}"
        value = getattr(args, name)
        if value is not None or flag in subsets:  # the user's value wins over the preset's
            flags += [flag, str(value if value is not None else subsets[flag])]
    flags += ["--checkpoint-dir", args.checkpoint_dir, "--results-dir", args.results_dir]
    flags += ["--no-download"] * args.no_download + ["--force"] * args.force
    flags += ["--deterministic"] * args.deterministic
    return flags


def commands(args):
    """[(step, argv)] in pipeline order."""
    per_step, subsets = preset_flags(args.preset, args.checkpoint_dir)
    common = common_flags(args, subsets)
    out = []
    for step, _ in STEPS:
        if step == "ticket_transfer":  # MNIST: its own root, the CIFAR one unless given
            argv = common_flags(args, subsets, data_dir=args.mnist_dir) + per_step[step]
        elif step in TRAINING_STEPS:
            argv = common + per_step[step]
        elif step == "plot_results":
            argv = ["--results-dir", args.results_dir, "--plots-dir", args.plots_dir]
        else:
            argv = ["--results-dir", args.results_dir]
        out.append((step, [sys.executable, str(REPO / f"{step}.py"), *argv]))
    return out


def run_summaries(results_dir, folder):
    """{summary.json path: mtime} of every finished run under results/<folder>/."""
    root = Path(results_dir) / folder
    return {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")} if root.is_dir() else {}


class Step:
    """One entry script running as a subprocess, its output in a log file."""

    def __init__(self, index, total, name, argv, args, env):
        self.index, self.total, self.name, self.argv = index, total, name, argv
        self.folder = dict(STEPS)[name]
        self.results_dir = args.results_dir
        self.log_path = Path(args.results_dir) / "logs" / f"{name}.log"
        self.env = env

    def start(self):
        self.before = run_summaries(self.results_dir, self.folder) if self.folder else {}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # appended, one header per attempt: the log of a failed attempt is never overwritten
        self.log = open(self.log_path, "a")
        self.log.write(f"{ATTEMPT_MARK} {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
                       "$ " + shlex.join(self.argv) + "\n")
        self.log.flush()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def finish(self):
        """Print the step's progress line; return its exit code."""
        self.log.close()
        code = self.proc.returncode
        seconds = time.perf_counter() - self.t0
        head = f"[{self.index}/{self.total}] {self.name}:"
        if code != 0:
            attempt = self.log_path.read_text(errors="replace").rsplit(ATTEMPT_MARK, 1)[-1]
            tail = [ln for ln in attempt.splitlines()[2:] if ln.strip()][-1:]
            print(f"error: step {self.name} failed with exit code {code} after {seconds:.0f}s: "
                  f"{tail[0].strip() if tail else '(no output)'} (full log: {self.log_path})",
                  file=sys.stderr, flush=True)
            return code
        runs = ""
        if self.folder:
            after = run_summaries(self.results_dir, self.folder)
            trained = sum(1 for p, t in after.items() if self.before.get(p) != t)
            if after:  # robustness `evaluate` only attacks checkpoints: no runs of its own to count
                runs = f" {trained} run{'s' * (trained != 1)} trained, {len(after) - trained} already finished,"
        print(f"{head} done in {seconds:.0f}s,{runs} log {self.log_path}", flush=True)
        return 0


def run_group(group, jobs):
    """Run the steps of `group` at most `jobs` at a time; stop all at the first failure."""
    pending, running = list(group), []
    while pending or running:
        while pending and len(running) < jobs:
            running.append(pending.pop(0).start())
        time.sleep(0.2)
        for step in [s for s in running if s.proc.poll() is not None]:
            running.remove(step)
            code = step.finish()
            if code != 0:
                for other in running:  # they resume from their last epoch on the next run
                    other.proc.terminate()
                    other.proc.wait()
                    other.log.close()
                    print(f"stopped {other.name} (it resumes on the next run)", file=sys.stderr)
                return code
    return 0


@cli_main
def main(argv=None):
    args = parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    unknown = sorted(set(args.skip) - {s for s, _ in STEPS})
    if unknown:
        raise UserError(f"--skip: unknown step(s) {', '.join(unknown)}; steps are {', '.join(s for s, _ in STEPS)}")
    cmds = [(step, argv_) for step, argv_ in commands(args) if step not in args.skip]
    if args.dry_run:
        for step, argv_ in cmds:
            print(f"{step}: {shlex.join(argv_)}")
        return
    missing = [step for step, _ in cmds if not (REPO / f"{step}.py").is_file()]
    if missing:
        raise UserError(f"{', '.join(f'{m}.py' for m in missing)} missing from {REPO}; "
                        f"add it, or leave the step out with --skip {' '.join(missing)}")

    # Threads per process: N concurrent jobs share the CPU cores instead of oversubscribing them.
    env = dict(os.environ)
    if args.jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))

    # Dense first; Tasks 2-4 only need it (side by side with --jobs); then robustness, plots, report.
    t0 = time.perf_counter()
    steps = [Step(i, len(cmds), step, argv_, args, env) for i, (step, argv_) in enumerate(cmds, 1)]
    print(f"run_all: preset {args.preset}, {len(steps)} steps, jobs {args.jobs}, "
          f"logs in {Path(args.results_dir) / 'logs'}", flush=True)
    groups, i = [], 0
    while i < len(steps):
        if steps[i].name in PARALLEL:
            j = i
            while j < len(steps) and steps[j].name in PARALLEL:
                j += 1
            groups.append(steps[i:j])
            i = j
        else:
            groups.append([steps[i]])
            i += 1
    for group in groups:
        code = run_group(group, args.jobs)
        if code != 0:
            sys.exit(code)
    print(f"run_all: all {len(steps)} steps done in {time.perf_counter() - t0:.0f}s; "
          f"report: {Path(args.results_dir) / 'report.pdf'}, code: {Path(args.results_dir) / 'code.zip'}, "
          f"figures: {args.plots_dir}/")


if __name__ == "__main__":
    main()
