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
import time
from pathlib import Path

from data import load_from_config
from models import ARCHS, model_from_checkpoint, read_checkpoint
from utils.errors import UserError, cli_main
from utils.experiment import check_fractions, task_parser, task_setup
from utils.init_pruning import (ABLATIONS, DENSE_METHOD, METHODS, SCORE_BATCH_SIZE,
                                check_init_checkpoint, draw_score_batch, fresh_init_checkpoint,
                                keep_all_mask, one_shot_mask, one_shot_scores, prunes_highest,
                                run_config, run_folder, shuffle_generator, shuffled, start_model,
                                synflow_mask, train_subnetwork, write_summary)
from utils.io import save_torch
from utils.lottery import checkpoint_label
from utils.pruning import ScoreChoice, chosen_by_score, weights_fingerprint
from utils.train import finished_summary

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
    configs = {}
    for method, ablation, s in plan:
        configs[method] = dict(config, **method_config(method, args))
        finished_summary(setup.results_dir / run_folder(run_name, method, ablation, s),
                         run_config(configs[method], method, ablation, s), setup.run.force)
    print(f"{run_name}: {len(plan)} subnetworks of {arch} from {init_label}, {setup.hp.epochs} epochs each")

    # Step 4: the data, and the score batch (SNIP, GraSP): unaugmented training images only.
    setup.train, setup.test = load_from_config(setup.data, device)
    ckpt_root = setup.checkpoint_dir / run_name
    batch = None
    if {"snip", "grasp"} & set(methods):
        batch = draw_score_batch(setup.train, args.score_per_class, seed)
        save_torch(batch, ckpt_root / "score_batch.pt")
    init_model = model_from_checkpoint(init_ckpt, device)
    subnet = dict(setup=setup, run_name=run_name, arch=arch, checkpoint_extra=extra)
    rows = []

    # Step 5: sparsity 0, the one dense run every method shares.
    if 0.0 in sparsities:
        mask = keep_all_mask(init_model)
        rows.append(train_subnetwork(method=DENSE_METHOD, ablation="original", sparsity=0.0, mask=mask,
                                     model=start_model(init_ckpt, mask, "original", seed, device),
                                     config=configs[DENSE_METHOD], score_seconds=0.0, **subnet))

    # Step 6: each method: score the init, derive every ablation's mask, train each subnetwork.
    for method in methods:
        targets = [s for s in sparsities if s > 0]
        if not targets:
            continue
        todo = ["original"] if method == "random" else ablations
        if method != "synflow":
            t0 = time.perf_counter()
            scores = one_shot_scores(method, init_model, batch, seed, args.score_batch_size)
            seconds = time.perf_counter() - t0
            save_torch(scores, ckpt_root / method / "scores.pt")
        for s in targets:
            # chosen_by_score: the share of removed weights the score decided, not a tie at the
            # cut broken by position (utils.pruning.ScoreChoice); shuffle and reinit keep the
            # original's, whose per-layer counts they keep
            if method == "synflow":  # iterative: one schedule per sparsity, and per end when inverted
                t0, choice = time.perf_counter(), ScoreChoice()
                mask, scores = synflow_mask(init_model, s, args.synflow_iterations, choice=choice)
                seconds = time.perf_counter() - t0
                save_torch(scores, ckpt_root / method / "scores.pt")  # the last sparsity's last round
            else:
                mask = one_shot_mask(method, scores, s)
                choice = ScoreChoice().add(scores, mask, prune_highest=prunes_highest(method))
            for ablation in todo:
                ablation_seconds, chosen = seconds, choice.share
                if ablation == "original" or ablation == "reinit":
                    ablated = mask
                elif ablation == "shuffle":
                    ablated = shuffled(mask, shuffle_generator(seed, method, s))
                elif method == "synflow":  # invert: the other end pruned in every round
                    t0, inverted = time.perf_counter(), ScoreChoice()
                    ablated, _ = synflow_mask(init_model, s, args.synflow_iterations, invert=True, choice=inverted)
                    ablation_seconds, chosen = time.perf_counter() - t0, inverted.share
                else:
                    ablated = one_shot_mask(method, scores, s, invert=True)
                    chosen = chosen_by_score(scores, ablated, prune_highest=prunes_highest(method, True))
                rows.append(train_subnetwork(
                    method=method, ablation=ablation, sparsity=s, mask=ablated,
                    model=start_model(init_ckpt, ablated, ablation, seed, device),
                    config=configs[method], score_seconds=ablation_seconds, chosen_by_score=chosen,
                    **subnet))

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
