"""Does pruning make the network faster or smaller? Every leaderboard network, measured deployed.

    python deploy.py                          # every network the leaderboard lists, CPU (+ GPU if any)
    python deploy.py --repeats 50 --warmup 5  # more timed passes: steadier medians

For every network of the leaderboard (utils/leaderboard.py; every seed_<s>/ replicate of a
several-seed results folder) it loads the saved checkpoint, builds its deployable forms
(utils/deploy.py: the compact network, or dense with zeros, CSR per layer and torch.sparse.mm
for masks) and measures on the CPU, and on the GPU when there is one: median latency at batch 1
and 128 (the forms and the dense network timed in turns), peak forward memory, size on disk and
the logits' largest difference from the masked network on real test images. Writes
results/deploy/<run>/summary.json per network (the unit a rerun skips; --force redoes) and
results/deploy/summary.csv, one row per network, form and device. See docs/deploy.md.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)

from pathlib import Path

import torch

from data import load_cifar10, to_pixels
from models import read_checkpoint
from utils.config import DataConfig, RunConfig, add_dataclass_args, from_args, make_parser
from utils.deploy import FORMS, measure_network
from utils.errors import UserError, cli_main
from utils.io import load_json, save_csv, save_json
from utils.leaderboard import COMMANDS, Leaderboard
from utils.plots.common import Results
from utils.replicates import seed_folders

COLUMNS = ["source", "method", "sparsity", "form", "device", "latency_ms_b1", "latency_ms_b128", "peak_mem_mb",
           "peak_mem_mb_b1", "disk_mb", "dense_latency_ms_b1", "dense_latency_ms_b128", "speedup_b128",
           "max_abs_logit_diff", "flops", "dense_flops", "threads", "repeats", "warmup", "note", "checkpoint"]
IMAGES = 128  # real test images timed and compared (the test set repeated when it holds fewer)


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0])
    add_dataclass_args(parser, DataConfig, "data (the real test images timed and compared)")
    add_dataclass_args(parser, RunConfig, "run")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per form and batch size (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes before them")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the timed passes (0: as the process starts, OMP_NUM_THREADS or all cores)")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS,
                        help="the forms measured (a network gets those of its kind: docs/deploy.md)")
    return parser.parse_args(argv)


def devices_of(choice):
    """The CPU always; the GPU too when there is one (--device cpu: the CPU only)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return ["cpu"] + (["cuda"] if choice != "cpu" and torch.cuda.is_available() else [])


def test_images(data):
    """The first IMAGES real test images, as pixels in [0, 1] (the training split is not needed)."""
    _, test = load_cifar10(data.data_dir, not data.no_download, data.train_subset or 1, data.test_subset, "cpu")
    return to_pixels(test.images[:IMAGES]).contiguous()


def replicates(results_dir, checkpoint_dir):
    """[(results folder, checkpoint folder)]: each seed_<s>/ pair, or the folders themselves."""
    seeds = seed_folders(results_dir)
    if seeds:
        return [(p, Path(checkpoint_dir) / p.name) for p in seeds.values()]
    return [(Path(results_dir), Path(checkpoint_dir))]


def measure_replicate(res_dir, ck_dir, images, args, devices):
    """Measure every network of one replicate's leaderboard not measured yet; write its summary.csv.
    Returns (measured now, already measured)."""
    board = Leaderboard(Results(res_dir))
    entries = [e for e in board.entries if e.checkpoint]
    dense = next((e for e in entries if e.family == "dense"), None)
    if dense is None:
        raise UserError(f"{res_dir}/dense/summary.json not found: deploy.py measures the leaderboard's "
                        "networks against the dense one; run python train_dense.py first")
    wanted = {"forms": sorted(args.forms), "devices": devices, "repeats": args.repeats, "warmup": args.warmup}
    cache, done, fresh = {}, 0, 0

    def load(entry):
        if entry.checkpoint not in cache:
            family = entry.family if entry.family in COMMANDS else "dense"
            cache[entry.checkpoint] = read_checkpoint(ck_dir / entry.checkpoint, hint=f"{COMMANDS[family]} --force")
        return cache[entry.checkpoint]

    rows = []
    for e in entries:
        out = res_dir / "deploy" / e.run_summary
        saved = load_json(out, fix="delete it, or rerun with --force") if out.is_file() else None
        if saved is not None and not args.force and saved.get("settings") == wanted:
            done += 1
        else:
            measured = []
            for device in devices:
                for r in measure_network(load(e), load(dense), images, device, args.repeats, args.warmup,
                                         torch.get_num_threads(), args.forms):
                    measured.append({"source": e.run_summary, "method": e.method, "sparsity": e.sparsity,
                                     "checkpoint": e.checkpoint, **r})
            saved = {"source": e.run_summary, "checkpoint": e.checkpoint, "settings": wanted, "rows": measured}
            save_json(saved, out)
            fresh += 1
            print(f"{e.run_summary}: " + ", ".join(
                f"{r['form']}/{r['device']} {r['latency_ms_b128']:.1f} ms at b128, {r['disk_mb']:.3f} MB"
                for r in measured if r.get("latency_ms_b128") is not None), flush=True)
        rows += saved["rows"]
    save_csv(rows, res_dir / "deploy" / "summary.csv", COLUMNS)
    return fresh, done


@cli_main
def main(argv=None):
    args = parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        raise UserError(f"--repeats must be >= 1 and --warmup, --threads >= 0; got {args.repeats}, "
                        f"{args.warmup}, {args.threads}")
    data, run = from_args(DataConfig, args), from_args(RunConfig, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = devices_of(run.device)
    images = test_images(data)
    fresh = done = 0
    for res_dir, ck_dir in replicates(run.results_dir, run.checkpoint_dir):
        f, d = measure_replicate(res_dir, ck_dir, images, args, devices)
        fresh, done = fresh + f, done + d
    tables = "seed_*/deploy/summary.csv" if seed_folders(run.results_dir) else "deploy/summary.csv"
    print(f"deploy: {fresh} networks measured, {done} already measured, on {' and '.join(devices)} "
          f"({torch.get_num_threads()} CPU threads); table: {Path(run.results_dir) / tables}")


if __name__ == "__main__":
    main()
