"""Step 1 of every task: train the dense ResNet once, keeping its initialisation and checkpoints.

    python train_dense.py                      # the standard recipe, 160 epochs
    python train_dense.py --bn-l1 1e-4 --run-name dense_slim   # network-slimming penalty

Writes checkpoints/<run>/{init.pt, epoch_010.pt, ..., bn_history.pt} and
results/<run>/{trajectory.csv, summary.json}; see docs/train_dense.md. --save-epochs beyond
--epochs is an error, not ignored.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
from models import ARCHS, get_model, prunable_weights
from utils.errors import UserError, cli_main
from utils.experiment import task_parser, task_setup
from utils.train import DistanceFromEpoch1, seeded, train_run

DEFAULT_SAVE_EPOCHS = (10, 30, 50, 100, 160)  # the ticket epochs of Tasks 2-4 and the last one


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20", help=f"one of {', '.join(ARCHS)}")
    parser.add_argument("--shortcut", default="B", choices=("A", "B"),
                        help="B: 1x1 conv + BN on stride/width changes (open_lth); A: zero-padded identity")
    parser.add_argument("--save-epochs", type=int, nargs="*", default=None,
                        help="epochs whose weights are kept as epoch_EEE.pt (the last epoch always is); "
                             f"default: those of {' '.join(map(str, DEFAULT_SAVE_EPOCHS))} within "
                             "--epochs; a value beyond --epochs is an error")
    parser.add_argument("--bn-l1", type=float, default=0.0,
                        help="network-slimming L1 penalty λ on BatchNorm scaling factors")
    parser.add_argument("--run-name", default="dense", help="folder name under checkpoints/ and results/")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    if args.arch not in ARCHS:
        raise UserError(f"unknown --arch {args.arch!r}; choose one of {', '.join(ARCHS)}")
    if args.bn_l1 < 0:
        raise UserError(f"--bn-l1 must be >= 0, got {args.bn_l1}")
    if args.save_epochs is None:
        args.save_epochs = [e for e in DEFAULT_SAVE_EPOCHS if e <= args.epochs]
    late = sorted(e for e in args.save_epochs if not 0 <= e <= args.epochs)
    if late:  # never silently dropped: a later task would look for these checkpoints
        raise UserError(f"--save-epochs {' '.join(map(str, late))} lie outside the run's "
                        f"0..{args.epochs} epochs; keep them within --epochs (or raise --epochs)")

    # Step 1a: settings, device, and the data held on the device.
    setup = task_setup(args)
    hp, seed = setup.hp, setup.run.seed
    save_epochs = sorted({e for e in args.save_epochs if e > 0} | {hp.epochs} - {0})
    config = setup.config(arch=args.arch, shortcut=args.shortcut, bn_l1=args.bn_l1,
                          run_name=args.run_name)

    # Step 1b: the seeded initialisation (epoch 0), kept as init.pt and as the distance reference.
    model = seeded(lambda: get_model(args.arch, shortcut=args.shortcut), seed).to(setup.device)
    init_weights = {n: w.detach().clone() for n, w in prunable_weights(model).items()}

    # Step 1c: train with the standard recipe, saving the checkpoints every later task loads.
    summary = train_run(
        model, setup.train, setup.test, hp, arch=args.arch, config=config, seed=seed,
        ckpt_dir=setup.checkpoint_dir / args.run_name,
        results_dir=setup.results_dir / args.run_name, force=setup.run.force,
        save_as=[(0, "init.pt")] + [(e, f"epoch_{e:03d}.pt") for e in save_epochs],
        bn_l1=args.bn_l1, weight_distance_ref=init_weights, bn_history=True, desc=args.run_name,
        callbacks=[DistanceFromEpoch1()],  # what EarlyCroP's authors' detector reads
        **setup.train_kwargs())
    print(f"{args.run_name}: test accuracy {summary['test_acc']:.2f}% after {summary['epochs']} "
          f"epochs, {summary['params']:,} parameters, {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
