"""Task 2: prune a trained network by weight magnitude, then retrain it with the mask fixed.

    python prune_magnitude.py                                  # 50/70/90%, fine-tune 40 epochs
    python prune_magnitude.py --epochs 160 --lr 0.1 --milestones 80 120   # learning-rate rewinding

Per sparsity s writes checkpoints/magnitude/sparsity_<100s>/{mask.pt,start.pt,final.pt} and
results/magnitude/sparsity_<100s>/{trajectory.csv,summary.json,sparsity_report.json}, then
results/magnitude/summary.csv (dense vs pruned vs retrained accuracy); see README.md.
"""
from pathlib import Path

from models import load_checkpoint, model_from_checkpoint, prunable_weights
from utils.errors import cli_main
from utils.experiment import check_fractions, pct_name, task_parser, task_setup
from utils.io import save_csv, save_json, save_torch
from utils.pruning import (SCOPES, format_report, sparsity_report,
                           weights_fingerprint)
from utils.pruning import magnitude_mask_at_sparsity as magnitude_mask
from utils.train import evaluate, finished_summary, train_run

# Fine-tuning, not training from scratch: the weights are already trained, so start at the
# standard recipe's middle learning rate (0.01) and end at its last (0.001), a quarter of the
# dense budget. --epochs 160 --lr 0.1 --milestones 80 120 gives learning-rate rewinding instead.
FINE_TUNE = {"epochs": 40, "lr": 0.01, "milestones": (20,)}
SUMMARY_COLUMNS = ["sparsity", "dense_acc", "pruned_acc", "retrained_acc",
                   "scope", "epochs", "zeros", "prunable"]
OUTPUT_FILES = ("mask.pt", "start.pt", "final.pt")


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0], **FINE_TUNE)
    parser.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="trained checkpoint to prune (default: <checkpoint-dir>/dense/epoch_160.pt)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                        help="fractions of the prunable weights removed, each in [0, 1)")
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
    dense_acc = evaluate(dense, setup.test)[1]
    from_weights = prunable_weights(dense)
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

        # Step 2: prune by magnitude (cheap and deterministic, so also done for finished runs).
        mask = magnitude_mask(from_weights, target, args.scope, mask=from_ckpt.get("mask"))
        report = sparsity_report(mask)
        outputs_there = all((ckpt_dir / f).is_file() for f in OUTPUT_FILES)
        summary = finished_summary(results_dir, config, force) if outputs_there else None
        if summary is not None:
            print(f"{name}: finished already ({results_dir}); --force redoes it")
        else:
            print(f"{name}: {args.scope} magnitude pruning of {from_path}\n{format_report(report)}")
            save_torch(mask, ckpt_dir / "mask.pt")
            save_json({"target_sparsity": target, "scope": args.scope, "from": str(from_path),
                       **report}, results_dir / "sparsity_report.json")

            # Step 3: retrain the pruned network, the mask re-applied after every step; epoch 0
            # of the trajectory (and start.pt) is the pruned network before any retraining.
            model = model_from_checkpoint(from_ckpt, setup.device)
            redo = force or (results_dir / "summary.json").is_file()  # finished, but files lost
            summary = train_run(
                model, setup.train, setup.test, hp, arch=from_ckpt["arch"], config=config,
                ckpt_dir=ckpt_dir, results_dir=results_dir, seed=seed, force=redo, mask=mask,
                save_as=[(0, "start.pt"), (hp.epochs, "final.pt")], desc=name,
                checkpoint_extra={"widths": from_ckpt.get("widths"), "pruned_from": str(from_path)},
                **setup.train_kwargs())

        rows.append({"sparsity": target, "dense_acc": dense_acc,
                     "pruned_acc": summary["start_test_acc"], "retrained_acc": summary["test_acc"],
                     "scope": args.scope, "epochs": summary["epochs"],
                     "zeros": report["overall"]["zeros"], "prunable": report["overall"]["total"]})

    # Summary: dense vs pruned (before retraining) vs retrained, one row per sparsity.
    save_csv(rows, results_root / "summary.csv", SUMMARY_COLUMNS)
    print(f"\n{'sparsity':>8}  {'dense':>7}  {'pruned':>7}  {'retrained':>9}")
    for r in rows:
        print(f"{100 * r['sparsity']:7g}%  {r['dense_acc']:6.2f}%  {r['pruned_acc']:6.2f}%  "
              f"{r['retrained_acc']:8.2f}%")
    print(f"written: {results_root / 'summary.csv'}")


if __name__ == "__main__":
    main()
