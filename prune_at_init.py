"""Pruning at initialisation and its sanity checks (Frankle et al. 2021, "Missing the Mark").

    python prune_at_init.py                                  # ResNet-20 from the dense init.pt
    python prune_at_init.py --arch vgg16 --epochs 80 --milestones 40 60   # the report's network
    python prune_at_init.py --methods snip synflow --ablations original invert

Prunes the untrained network by five scores (random, magnitude, SNIP, GraSP, SynFlow), trains
each subnetwork with its mask fixed (the standard recipe), and runs the three ablations that
test what the scores decide: shuffle each layer's mask, re-initialise the kept weights, invert
the scores. Writes checkpoints/<run>/<method>/<ablation>/sparsity_<s>/{mask.pt,start.pt,final.pt},
checkpoints/<run>/{score_batch.pt,<method>/scores.pt}, results/<run>/<method>/<ablation>/
sparsity_<s>/{trajectory.csv,summary.json,sparsity_report.json} and results/<run>/summary.csv;
see docs/prune_at_init.md.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
import functools
from pathlib import Path

import torch

from data import load_from_config
from models import ARCHS, model_from_checkpoint, read_checkpoint
from utils.errors import UserError, cli_main
from utils.experiment import check_fractions, task_parser, task_setup
from utils.init_pruning import (ABLATIONS, DENSE_METHOD, METHODS, SCORE_BATCH_SIZE, MethodScores,
                                check_init_checkpoint, draw_score_batch, fresh_init_checkpoint, keep_all_mask,
                                subnetwork_plan, train_subnetwork, write_summary)
from utils.io import load_csv, load_torch, save_torch
from utils.lottery import checkpoint_label
from utils.pruning import weights_fingerprint

DEFAULT_SPARSITIES = [0.0, 0.3, 0.6, 0.9, 0.98]  # the reproduction report's


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0], adversarial=False)
    parser.add_argument("--init", default=None,
                        help="the initialisation to prune: an unmasked epoch-0 checkpoint "
                             "(default: <checkpoint-dir>/dense/init.pt)")
    parser.add_argument("--arch", default=None,
                        help=f"instead of --init, a fresh init of this network from train_dense.py's "
                             f"seed stream (one of {', '.join(ARCHS)})")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="pruning scores to run")
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS),
                        help="original; shuffle (each layer's mask permuted); reinit (same mask, "
                             "fresh init); invert (the other end of the scores pruned). random runs "
                             "original only")
    parser.add_argument("--sparsities", type=float, nargs="+", default=DEFAULT_SPARSITIES,
                        help="fractions of the prunable weights removed; 0 is one shared dense run "
                             "(method none)")
    parser.add_argument("--score-per-class", type=int, default=10,
                        help="training images per class in the SNIP/GraSP score batch")
    parser.add_argument("--score-batch-size", type=int, default=SCORE_BATCH_SIZE,
                        help="score images per forward pass; with more, SNIP and GraSP average the "
                             "pieces as the authors' code does (default: Synaptic-Flow's 256)")
    parser.add_argument("--synflow-iterations", type=int, default=100,
                        help="SynFlow's pruning rounds K (round k keeps N·(1−s)^(k/K) weights)")
    parser.add_argument("--run-name", default=None,
                        help="folder under checkpoints/ and results/ (default: prune_at_init, "
                             "prune_at_init_<arch> for --arch other than resnet20)")
    return parser.parse_args(argv)


def check_choices(values, allowed, flag):
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise UserError(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return [a for a in allowed if a in values]  # canonical order, duplicates dropped


def method_config(method, args):
    """The settings that change a method's masks, recorded in its runs' config."""
    if method in ("snip", "grasp"):
        pieces = {} if 10 * args.score_per_class <= args.score_batch_size else \
            {"score_batch_size": args.score_batch_size}  # one piece: the same scores as before the flag
        return {"score_per_class": args.score_per_class, **pieces}
    if method == "synflow":
        return {"synflow_iterations": args.synflow_iterations}
    return {}


@cli_main
def main(argv=None):
    args = parse_args(argv)

    # Step 1: settings, checked before anything is loaded.
    methods = check_choices(args.methods, METHODS, "--methods")
    ablations = check_choices(args.ablations, ABLATIONS, "--ablations")
    sparsities = check_fractions(args.sparsities, "--sparsities")
    if args.score_per_class < 1:
        raise UserError(f"--score-per-class must be >= 1, got {args.score_per_class}")
    if args.score_batch_size < 1:
        raise UserError(f"--score-batch-size must be >= 1, got {args.score_batch_size}")
    if args.synflow_iterations < 1:
        raise UserError(f"--synflow-iterations must be >= 1, got {args.synflow_iterations}")
    if args.init is not None and args.arch is not None:
        raise UserError("--init and --arch both given: prune a saved initialisation (--init) or a "
                        "fresh one (--arch), not both")
    setup = task_setup(args, load_data=False)
    seed, device = setup.run.seed, setup.device

    # Step 2: the initialisation to prune (a saved init.pt, or train_dense.py's fresh init).
    if args.arch is not None:
        if args.arch not in ARCHS:
            raise UserError(f"unknown --arch {args.arch!r}; choose one of {', '.join(ARCHS)}")
        init_ckpt, init_label = fresh_init_checkpoint(args.arch, seed), f"fresh {args.arch} seed {seed}"
    else:
        init_path = Path(args.init or setup.checkpoint_dir / "dense" / "init.pt")
        hint = "python train_dense.py" + (f" --checkpoint-dir {setup.checkpoint_dir}"
                                          if str(setup.checkpoint_dir) != "checkpoints" else "")
        init_ckpt = read_checkpoint(init_path, hint=hint)
        check_init_checkpoint(init_ckpt, init_path)
        init_label = checkpoint_label(init_path)
    arch = init_ckpt["arch"]
    run_name = args.run_name or ("prune_at_init" if args.arch in (None, "resnet20") else f"prune_at_init_{arch}")
    config = setup.config(arch=arch, shortcut=(init_ckpt.get("config") or {}).get("shortcut", "B"),
                          init=init_label, init_fingerprint=weights_fingerprint(init_ckpt["model"]))
    extra = {"widths": init_ckpt.get("widths")}

    # Step 3: every run to make; a finished one made with other settings stops us before any work.
    plan = [(DENSE_METHOD, "original", 0.0)] if 0.0 in sparsities else []
    for method in methods:
        for s in (s for s in sparsities if s > 0):
            plan += [(method, a, s) for a in (["original"] if method == "random" else ablations)]
    configs = {m: dict(config, **method_config(m, args)) for m in {m for m, _, _ in plan}}
    left = [run for run in plan
            if not subnetwork_plan(setup, run_name, *run, configs[run[0]])[0].skip]
    print(f"{run_name}: {len(plan)} subnetworks of {arch} from {init_label}, {setup.hp.epochs} epochs each, "
          f"{len(plan) - len(left)} finished already")

    # Step 4: the data (only if a run is left to train), and the score batch (SNIP, GraSP; drawn
    # only if a score is computed): unaugmented training images only.
    if left:
        setup.train, setup.test = load_from_config(setup.data, device)
    ckpt_root = setup.checkpoint_dir / run_name

    @functools.cache
    def score_batch():
        batch = draw_score_batch(setup.train, args.score_per_class, seed)
        path = ckpt_root / "score_batch.pt"
        if not path.is_file() or not torch.equal(load_torch(path)["indices"], batch["indices"]):
            save_torch(batch, path)
        return batch

    if any(method in ("snip", "grasp") for method, _, _ in left):
        score_batch()  # drawn now: a split too small for --score-per-class stops us before any training
    init_model = model_from_checkpoint(init_ckpt, device)
    # what the scores depend on: the init, the method, its settings and, for data scores, the data
    score_settings = {"init_fingerprint": config["init_fingerprint"], "seed": seed}
    scores = {m: MethodScores(ckpt_root / m, m, dict(score_settings, method=m, **method_config(m, args),
                                                     **({"train_subset": setup.data.train_subset}
                                                        if m in ("snip", "grasp") else {})),
                              init_model, score_batch, seed, args.synflow_iterations,
                              force=setup.run.force, score_batch_size=args.score_batch_size)
              for m in methods}
    # a finished run's scoring time is the one its row recorded
    summary_path = setup.results_dir / run_name / "summary.csv"
    recorded = {(r["method"], r["ablation"], float(r["sparsity"])): r["score_seconds"]
                for r in (load_csv(summary_path) if summary_path.is_file() else [])}
    subnet = dict(setup=setup, run_name=run_name, arch=arch, init_ckpt=init_ckpt, checkpoint_extra=extra)
    rows = []

    # Step 5: sparsity 0, the one dense run every method shares.
    if 0.0 in sparsities:
        rows.append(dict(train_subnetwork(method=DENSE_METHOD, ablation="original", sparsity=0.0,
                                          make_mask=lambda: keep_all_mask(init_model),
                                          config=configs[DENSE_METHOD], **subnet), score_seconds=0.0))

    # Step 6: each method, sparsity and ablation: its mask (scoring the init only for a run that
    # starts), then the subnetwork trained.
    for method, ablation, s in (run for run in plan if run[0] != DENSE_METHOD):
        row = train_subnetwork(method=method, ablation=ablation, sparsity=s, config=configs[method],
                               make_mask=functools.partial(scores[method].mask, ablation, s),
                               share=functools.partial(scores[method].chosen, ablation, s), **subnet)
        # a finished run keeps the scoring time its row recorded; a new one: the kept or measured time
        key = (method, ablation, s)
        seconds = recorded[key] if key not in left and key in recorded else scores[method].score_seconds(ablation, s)
        rows.append(dict(row, score_seconds=seconds))

    # Step 7: the summary table.
    path = setup.results_dir / run_name / "summary.csv"
    merged = write_summary(rows, path)
    print(f"{'method':<10} {'ablation':<9} {'sparsity':>8} {'start':>7} {'final':>7} {'by score':>8}")
    for r in merged:
        chosen = f"{float(r['chosen_by_score']):.3f}" if r.get("chosen_by_score") not in (None, "") else "-"
        empty = r.get("collapsed_layers") or ""
        print(f"{r['method']:<10} {r['ablation']:<9} {100 * float(r['sparsity']):>7.4g}% "
              f"{float(r['start_acc']):>6.2f}% {float(r['final_acc']):>6.2f}% {chosen:>8}"
              + (f"  layer collapse: {len(empty.split(';'))} empty" if empty else ""))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
