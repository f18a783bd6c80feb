"""Task 2: prune a trained network by weight magnitude, then retrain it with the mask fixed.

    python prune_magnitude.py                                  # 0/50/70/90%, fine-tune 40 epochs
    python prune_magnitude.py --epochs 160 --lr 0.1 --milestones 80 120   # learning-rate rewinding
    python prune_magnitude.py --ignore-layers linear           # the classifier left whole

Per sparsity s writes checkpoints/magnitude/sparsity_<100s>/{mask.pt,start.pt,final.pt} and
results/magnitude/sparsity_<100s>/{trajectory.csv,summary.json,sparsity_report.json}, then
results/magnitude/summary.csv (dense vs pruned vs retrained accuracy); see docs/prune_magnitude.md.

Sparsity 0 (in the defaults) is the dense network fine-tuned with the same schedule: "does
pruning improve accuracy?" compares pruned-and-fine-tuned with fine-tuned, not with a network
trained 40 epochs less. The printed table gives both differences.

Which layers are pruned: by default every Conv2d and Linear weight, the classifier included
(our default). open_lth, the Lottery Ticket authors' code, leaves the classifier (`fc`) of its
CIFAR ResNets out of pruning; `--ignore-layers linear` does the same here. Ignored layers are
absent from mask.pt and kept whole; the sparsity is then the fraction of the remaining layers'
weights removed (as in open_lth), and `prunable` in summary.csv counts those weights only.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
from pathlib import Path

from models import load_checkpoint, model_from_checkpoint, prunable_weights
from utils.errors import cli_main
from utils.experiment import check_fractions, pct_name, task_parser, task_setup
from utils.io import save_csv, save_json, save_torch
from utils.pruning import (SCOPES, collapsed_layers, format_report, magnitude_choice,
                           magnitude_mask_at_sparsity, sparsity_report, weights_fingerprint,
                           without_layers)
from utils.train import SummaryFields, evaluate, plan_run, train_run

# Fine-tuning, not training from scratch: the weights are already trained, so start at the
# standard recipe's middle learning rate (0.01) and end at its last (0.001), a quarter of the
# dense budget. --epochs 160 --lr 0.1 --milestones 80 120 gives learning-rate rewinding instead.
FINE_TUNE = {"epochs": 40, "lr": 0.01, "milestones": (20,)}
SUMMARY_COLUMNS = ["sparsity", "dense_acc", "pruned_acc", "retrained_acc",
                   "scope", "epochs", "zeros", "prunable", "collapsed_layers", "chosen_by_score"]
OUTPUT_FILES = ("mask.pt", "start.pt", "final.pt")


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0], **FINE_TUNE)
    parser.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="trained checkpoint to prune (default: <checkpoint-dir>/dense/epoch_160.pt)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9],
                        help="fractions of the prunable weights removed, each in [0, 1); 0 = the "
                             "dense network fine-tuned with the same schedule (the fair reference)")
    parser.add_argument("--ignore-layers", nargs="+", default=[], metavar="NAME",
                        help="layers left out of pruning (kept whole), e.g. linear (open_lth's "
                             "ResNet default); default: none, every Conv2d/Linear weight is pruned")
    parser.add_argument("--scope", default="global", choices=SCOPES,
                        help="global: one magnitude threshold over all layers; layerwise: the same "
                             "fraction removed from every layer")
    parser.add_argument("--run-name", default="magnitude",
                        help="folder name under checkpoints/ and results/")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    sparsities = check_fractions(args.sparsities, "--sparsities")
    setup = task_setup(args)
    hp, seed, force = setup.hp, setup.run.seed, setup.run.force
    ckpt_root, results_root = setup.checkpoint_dir / args.run_name, setup.results_dir / args.run_name

    # Step 1: the trained weights to prune, and their accuracy on this run's test data.
    from_path = Path(args.from_path or setup.checkpoint_dir / "dense" / "epoch_160.pt")
    make_it = "python train_dense.py"
    if args.from_path is None and args.checkpoint_dir != "checkpoints":
        make_it += f" --checkpoint-dir {setup.checkpoint_dir}"
    dense, from_ckpt = load_checkpoint(from_path, setup.device, hint=make_it)
    dense_acc = evaluate(dense, setup.test, precision=hp.precision)[1]
    from_weights = without_layers(prunable_weights(dense), args.ignore_layers)
    ignored = sorted(set(prunable_weights(dense)) - set(from_weights))
    from_mask = from_ckpt.get("mask") or {}
    # a pruned --from keeps its zeros: in the layers pruned here through the new mask, in the
    # ignored layers by training them under their old mask
    kept_zeros = {n: m for n, m in from_mask.items() if n not in from_weights}
    from_mask = {n: from_mask[n] for n in from_weights if n in from_mask} or None
    from_config, from_sha256 = from_ckpt.get("config") or {}, weights_fingerprint(from_ckpt["model"])
    print(f"dense: {from_path} ({from_ckpt['arch']}, epoch {from_ckpt.get('epoch')}), "
          f"test accuracy {dense_acc:.2f}%")

    rows = []
    for target in sparsities:
        name = pct_name(target, "sparsity")
        ckpt_dir, results_dir = ckpt_root / name, results_root / name
        # The run's identity: a finished run made from other weights or flags is never reused
        # (the weights' hash, not the --from path, so moving the file changes nothing).
        config = setup.config(arch=from_ckpt["arch"], shortcut=from_config.get("shortcut", "B"),
                              run_name=args.run_name, sparsity=target, scope=args.scope,
                              from_epoch=from_ckpt.get("epoch"),
                              from_sha256=from_sha256)
        if ignored:  # only when used, so runs without the flag keep their identity
            config["ignore_layers"] = ignored

        # Step 2: prune by magnitude (cheap and deterministic, so also done for finished runs).
        mask = magnitude_mask_at_sparsity(from_weights, target, args.scope, mask=from_mask)
        report = sparsity_report(mask)
        # the share of this pruning's removals |w| decided, not ties at the cut (utils.pruning)
        chosen = magnitude_choice(from_weights, mask, from_mask, args.scope).share
        plan = plan_run(ckpt_dir, results_dir, config, OUTPUT_FILES, force)
        if plan.skip:
            summary = plan.summary
            print(f"{name}: finished already ({results_dir}); --force redoes it")
        else:
            print(f"{name}: {args.scope} magnitude pruning of {from_path}\n{format_report(report)}")
            save_torch(mask, ckpt_dir / "mask.pt")
            save_json({"target_sparsity": target, "scope": args.scope, "from": str(from_path),
                       **report}, results_dir / "sparsity_report.json")

            # Step 3: retrain the pruned network, the mask re-applied after every step; epoch 0
            # of the trajectory (and start.pt) is the pruned network before any retraining.
            model = model_from_checkpoint(from_ckpt, setup.device)
            summary = train_run(
                model, setup.train, setup.test, hp, arch=from_ckpt["arch"], config=config,
                ckpt_dir=ckpt_dir, results_dir=results_dir, seed=seed, force=plan.fresh,
                mask={**kept_zeros, **mask},
                save_as=[(0, "start.pt"), (hp.epochs, "final.pt")], outputs=OUTPUT_FILES, desc=name,
                checkpoint_extra={"widths": from_ckpt.get("widths"), "pruned_from": str(from_path)},
                callbacks=[SummaryFields(chosen_by_score=chosen)], **setup.train_kwargs())

        rows.append({"sparsity": target, "dense_acc": dense_acc,
                     "pruned_acc": summary["start_test_acc"], "retrained_acc": summary["test_acc"],
                     "scope": args.scope, "epochs": summary["epochs"],
                     "zeros": report["overall"]["zeros"], "prunable": report["overall"]["total"],
                     "collapsed_layers": ";".join(collapsed_layers({**kept_zeros, **mask})),
                     "chosen_by_score": "" if chosen is None else chosen})

    # Summary: dense vs pruned (before retraining) vs retrained, one row per sparsity.
    save_csv(rows, results_root / "summary.csv", SUMMARY_COLUMNS)
    print_table(rows)
    print(f"written: {results_root / 'summary.csv'}")


def print_table(rows):
    """Dense, pruned, retrained, and the retrained accuracy against both references: the dense
    network (--from) and the dense network fine-tuned with the same schedule (sparsity 0)."""
    tuned = next((r["retrained_acc"] for r in rows if r["sparsity"] == 0), None)
    print(f"\n{'sparsity':>8}  {'dense':>7}  {'pruned':>7}  {'retrained':>9}  {'vs dense':>8}  "
          f"{'vs fine-tuned dense':>19}")
    for r in rows:
        vs_tuned = f"{r['retrained_acc'] - tuned:+18.2f}" if tuned is not None else f"{'n/a':>18}"
        print(f"{100 * r['sparsity']:7g}%  {r['dense_acc']:6.2f}%  {r['pruned_acc']:6.2f}%  "
              f"{r['retrained_acc']:8.2f}%  {r['retrained_acc'] - r['dense_acc']:+8.2f}  {vs_tuned}")
    if tuned is None:
        print("(no sparsity 0 run: add 0 to --sparsities for the fine-tuned dense reference)")


if __name__ == "__main__":
    main()
