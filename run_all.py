"""The whole assignment in one command: dense training, Tasks 2-4, robustness, plots, report.

    python run_all.py --preset full              # the assignment as written (GPU: about a day)
    python run_all.py --preset quick --jobs 3    # every schedule at 1/5: about 1/7 of the training epochs
    python run_all.py --preset smoke             # a few minutes on a laptop CPU: checks the plumbing
    python run_all.py --preset quick --seeds 0 1 2 --jobs 3             # three replicates, seed_<s>/ folders
    python run_all.py --preset full --seeds 0 1 2 --launcher slurm --slurm-partition gpu   # one Slurm job per step

Each step runs the real entry script as a subprocess with the preset's flags; finished runs are
skipped and interrupted ones resume (the scripts do that themselves), so running the same
command again only does what is missing. Every step's output is appended to
<results-dir>/logs/<step>.log under a header per attempt (a failed attempt's log is kept) and
one progress line per step is printed. `--jobs N` runs up to N steps at once, each as soon as
the steps whose outputs it reads are done (utils/launch.py DEPENDS), one GPU each when there are
several. `--seeds` runs one complete replicate per seed in <dir>/seed_<s>/, side by side with
--jobs; plots and report run once at the end. A failing step stops the pipeline with its exit
code. `--launcher slurm` submits each (seed, step) as a Slurm job through submitit and exits.
"""
import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from utils.config import make_parser
from utils.errors import UserError, cli_main
from utils.launch import GpuPool, Job, link_jobs, parse_minutes, run_local, submit_slurm

REPO = Path(__file__).resolve().parent
# (step, the folder under results/ whose summary.json files are its runs)
STEPS = [("train_dense", "dense"), ("prune_magnitude", "magnitude"), ("lottery_imp", "lottery"),
         ("early_bird", "early_bird"), ("three_regime", "three_regime"), ("prune_at_init", "prune_at_init"),
         ("ticket_transfer", "ticket_transfer"), ("earlycrop", "earlycrop"), ("robustness", "robustness"),
         ("deploy", "deploy"), ("plot_results", None), ("make_report", None)]
TRAINING_STEPS = {s for s, folder in STEPS if folder}


def preset_flags(preset, checkpoint_dir):
    """{step: flags} for a preset. Ticket epochs, --from and --rewind always name checkpoints the
    preset's dense run saves, so every later step finds its inputs."""
    dense_dir = Path(checkpoint_dir) / "dense"
    dep = []  # deploy.py: its own defaults (20 timed passes) except in smoke
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
        tr = ["--temperatures", 2, 4, "--densities", 0.1, 0.5, "--epochs", 1, "--lmc-points", 3]
        tt = ["--epochs", 1, "--rounds", 2]
        # one timed pass after one warm-up (timings are checked for presence here, not speed);
        # sparse_mm (unfold + CSR products, ~6x dense's time on a CPU) is left to tests/test_deploy.py
        dep = ["--repeats", 1, "--warmup", 1, "--forms", "dense", "compact", "dense_zeros", "sparse_csr",
               "semi_structured_24"]
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
        "deploy": dep,
    }
    return {step: [str(a) for a in f] for step, f in flags.items()}, [str(a) for a in subsets]


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=("full", "quick", "smoke"),
                        help="full: the assignment as written; quick: every schedule at 1/5, about 1/7 of "
                             "the training epochs; smoke: minutes on a CPU")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="one complete replicate per seed, in <checkpoint-dir>/seed_<s>/ and "
                             "<results-dir>/seed_<s>/ (default: one run, --seed, today's layout)")
    parser.add_argument("--launcher", default="local", choices=("local", "slurm"),
                        help="local: subprocesses on this machine; slurm: submit one job per (seed, step) "
                             "with submitit and exit")
    parser.add_argument("--jobs", type=int, default=1,
                        help="local launcher: up to N steps at once, each as soon as its inputs exist "
                             "(seeds side by side too); one GPU each when there are several")
    parser.add_argument("--plots-dir", default="plots", help="where plot_results.py writes the figures")
    parser.add_argument("--skip", nargs="*", default=[], metavar="STEP",
                        help=f"steps to leave out, of: {', '.join(s for s, _ in STEPS)}")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    slurm = parser.add_argument_group("--launcher slurm")
    slurm.add_argument("--slurm-partition", default=None, help="partition of every job (default: the cluster's)")
    slurm.add_argument("--slurm-gpus-per-job", type=int, default=1,
                       help="GPUs of each training job (plots and report get none)")
    slurm.add_argument("--slurm-time", default="24:00:00",
                       help="time limit of each job: whole minutes (720) or HH:MM:SS (12:00:00)")
    slurm.add_argument("--slurm-array-parallelism", type=int, default=None,
                       help="jobs waiting on the same jobs form one job array: at most N of its tasks "
                            "run at once (default: no limit)")
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
    common.add_argument("--compile", default=None, choices=("auto", "on", "off"),
                        help="torch.compile the step and evaluation (default: auto = on for CUDA, off on a CPU)")
    return parser.parse_args(argv)


def validate(args):
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    unknown = sorted(set(args.skip) - {s for s, _ in STEPS})
    if unknown:
        raise UserError(f"--skip: unknown step(s) {', '.join(unknown)}; steps are {', '.join(s for s, _ in STEPS)}")
    if args.seeds is not None and args.seed is not None:
        raise UserError("give either --seed S (one run, today's layout) or --seeds S1 S2 ... (one replicate "
                        "per seed in seed_<s>/ folders), not both")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds lists a seed twice: {' '.join(map(str, args.seeds))}")
    if args.seeds is not None and min(args.seeds) < 0:
        raise UserError(f"--seeds must be >= 0, got {' '.join(map(str, args.seeds))}")
    if args.launcher == "slurm":
        args.slurm_minutes = parse_minutes(args.slurm_time)
        if args.slurm_gpus_per_job < 0:
            raise UserError(f"--slurm-gpus-per-job must be >= 0, got {args.slurm_gpus_per_job}")
        if args.slurm_array_parallelism is not None and args.slurm_array_parallelism < 1:
            raise UserError(f"--slurm-array-parallelism must be >= 1, got {args.slurm_array_parallelism}")


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
    flags += ["--compile", args.compile] if args.compile else []
    return flags


def commands(args):
    """[(step, argv)] in pipeline order, for one seed's folders (args.checkpoint_dir/results_dir)."""
    per_step, subsets = preset_flags(args.preset, args.checkpoint_dir)
    common = common_flags(args, subsets)
    out = []
    for step, _ in STEPS:
        if step == "ticket_transfer":  # MNIST: its own root, the CIFAR one unless given
            argv = common_flags(args, subsets, data_dir=args.mnist_dir) + per_step[step]
        elif step == "deploy":  # measures eager inference: no --compile
            argv = [a for a, prev in zip(common, [None] + common) if "--compile" not in (a, prev)] + per_step[step]
        elif step in TRAINING_STEPS:
            argv = common + per_step[step]
        elif step == "plot_results":
            argv = ["--results-dir", args.results_dir, "--plots-dir", args.plots_dir]
        else:
            argv = ["--results-dir", args.results_dir]
        out.append((step, [sys.executable, str(REPO / f"{step}.py"), *argv]))
    return out


def replicate_args(args, seed):
    """args for seed `seed`'s replicate: its own seed_<s>/ folders under the given ones."""
    return argparse.Namespace(**{**vars(args), "seed": seed,
                                 "checkpoint_dir": str(Path(args.checkpoint_dir) / f"seed_{seed}"),
                                 "results_dir": str(Path(args.results_dir) / f"seed_{seed}")})


def plan_jobs(args):
    """Every job in pipeline order, `after` filled in: each training step once per seed (--seeds: in
    its seed_<s>/ folders), then plots and report once over the top-level results folder."""
    folders, order = dict(STEPS), [s for s, _ in STEPS]
    jobs = []
    for seed in (args.seeds if args.seeds is not None else [None]):
        run = args if seed is None else replicate_args(args, seed)
        for step, argv in commands(run):
            if step in args.skip or step not in TRAINING_STEPS:
                continue
            jobs.append(Job(step, argv, Path(run.results_dir) / "logs", Path(run.results_dir), folders[step], seed))
    # step-major (every seed's dense run first): with --jobs, the seeds' same steps start side by side
    jobs.sort(key=lambda job: order.index(job.step))
    for step, argv in commands(args):  # plots and report: the top-level folders, whatever the seeds
        if step not in args.skip and step not in TRAINING_STEPS:
            jobs.append(Job(step, argv, Path(args.results_dir) / "logs", Path(args.results_dir)))
    return link_jobs(jobs)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    validate(args)
    jobs = plan_jobs(args)
    if args.dry_run:
        for job in jobs:
            where = f"seed_{job.seed}/" if job.seed is not None else ""
            print(f"{where}{job.step}: {shlex.join(job.argv)}")
        return
    missing = sorted({job.step for job in jobs if not (REPO / f"{job.step}.py").is_file()})
    if missing:
        raise UserError(f"{', '.join(f'{m}.py' for m in missing)} missing from {REPO}; "
                        f"add it, or leave the step out with --skip {' '.join(missing)}")
    if args.launcher == "slurm":
        sys.exit(submit_slurm(jobs, Path(args.results_dir) / "logs" / "slurm", partition=args.slurm_partition,
                              gpus_per_job=args.slurm_gpus_per_job, minutes=args.slurm_minutes,
                              array_parallelism=args.slurm_array_parallelism, force=args.force))

    # Threads per process: N concurrent jobs share the CPU cores instead of oversubscribing them.
    env = dict(os.environ)
    if args.jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    gpus = GpuPool.from_environment(env, args.device) if args.jobs > 1 else GpuPool(0)

    t0 = time.perf_counter()
    seeds = "" if args.seeds is None else f", seeds {' '.join(map(str, args.seeds))}"
    gpu_note = f", one GPU each of {','.join(gpus.devices)}" if gpus.devices else ""
    print(f"run_all: preset {args.preset}{seeds}, {len(jobs)} steps, jobs {args.jobs}{gpu_note}, "
          f"logs in {Path(args.results_dir) / ('seed_*/logs' if args.seeds is not None else 'logs')}", flush=True)
    code = run_local(jobs, args.jobs, env, gpus)
    if code != 0:
        sys.exit(code)
    print(f"run_all: all {len(jobs)} steps done in {time.perf_counter() - t0:.0f}s; "
          f"report: {Path(args.results_dir) / 'report.pdf'}, code: {Path(args.results_dir) / 'code.zip'}, "
          f"figures: {args.plots_dir}/")


if __name__ == "__main__":
    main()
