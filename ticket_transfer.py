"""Lottery tickets on MNIST and their transfer across data, labels and optimizers.

    python ticket_transfer.py                                   # all four experiments, the table's recipes
    python ticket_transfer.py --experiments imp --archs lenet5  # winning tickets for LeNet-5 only
    python ticket_transfer.py --experiments data labels --epochs 10 --controls random reinit

Frankle & Carbin 2019: per-layer IMP with fixed rounds (train, prune --prune-rate of each
layer's survivors by |w|, the output layer at half rate, rewind to init.pt). Morcos et al. 2019:
both sides of an experiment (two data halves, digits 0-4 vs 5-9, Adam vs SGD) run IMP from one
shared init.pt; every round each side trains the other side's ticket, its own, and the controls.
Writes checkpoints/ticket_transfer/<experiment>/<arch>/{init.pt, <ticket>_<mask_from>_on_<trained_on>/
round_<RR>/{mask.pt,start.pt,final.pt}}, the same folders under results/ (trajectory.csv,
summary.json), results/ticket_transfer/<experiment>/splits.json and
results/ticket_transfer/summary.csv; see docs/ticket_transfer.md.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
from pathlib import Path

from data import load_mnist
from utils.config import DataConfig, RunConfig, from_args
from utils.errors import cli_main
from utils.experiment import task_parser
from utils.ticket_transfer import (ARCHS, CONTROLS, EXPERIMENTS, OPTIMIZERS, Context, check_rate_and_rounds,
                                   check_sides, experiment_config, make_sides, print_table, recipe,
                                   run_experiment, write_splits, write_summary)
from utils.train import select_device

FROM_TABLE = "(default: %(default)s, i.e. the experiment's value in the table of docs/ticket_transfer.md)"


def parse_args(argv):
    # The report's recipe: lr 0.0012, constant (no milestones), no weight decay; epochs and batch
    # size come from each experiment's row of the table unless given.
    parser = task_parser(__doc__.splitlines()[0], adversarial=False, epochs=None, batch_size=None,
                         lr=0.0012, weight_decay=0.0, milestones=())
    for action in parser._actions:
        if action.dest == "data_dir":
            action.help = "MNIST root, holding MNIST/raw/ (torchvision's layout); downloaded there when missing"
        elif action.dest in ("epochs", "batch_size"):
            action.help = f"{action.help} {FROM_TABLE}"
        elif action.dest == "lr":
            action.help = "learning rate (Adam and SGD), constant unless --milestones are given"
        elif action.dest == "momentum":
            action.help = "SGD momentum (the SGD side of the optimizer experiment, or --optimizer sgd)"
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS),
                        help="imp: winning tickets; data: two halves of the training set; labels: "
                             "digits 0-4 vs 5-9; optimizer: Adam vs SGD")
    parser.add_argument("--archs", nargs="+", default=None, choices=ARCHS,
                        help="architectures (default: %(default)s, i.e. lenet300 and lenet5 for imp, lenet300 "
                             "for the others)")
    parser.add_argument("--prune-rate", type=float, default=None,
                        help=f"fraction of each hidden layer's survivors pruned per round, the output "
                             f"layer at half of it {FROM_TABLE}")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"IMP rounds after the dense round 00 {FROM_TABLE}")
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                        help="optimizer of the imp, data and labels experiments (the optimizer "
                             "experiment always runs both)")
    parser.add_argument("--controls", nargs="*", default=["random"], choices=CONTROLS,
                        help="random: a random mask with the ticket's per-layer counts on the shared "
                             "init; reinit: the ticket's mask on a fresh initialisation")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    check_rate_and_rounds(args.prune_rate, args.rounds)

    # Step 1: settings and the device; MNIST from --data-dir/MNIST/raw/, every file checked.
    data_cfg, run_cfg = from_args(DataConfig, args), from_args(RunConfig, args)
    device = select_device(run_cfg.device, run_cfg.deterministic)
    train, test = load_mnist(data_cfg.data_dir, not data_cfg.no_download, data_cfg.train_subset,
                             data_cfg.test_subset, device)
    print(f"MNIST: {len(train)} training and {len(test)} test images from {data_cfg.data_dir}")
    results_root = Path(run_cfg.results_dir) / "ticket_transfer"
    rows = []

    for experiment in args.experiments:
        spec = EXPERIMENTS[experiment]
        # Step 2: the experiment's sides (which images each trains and is tested on), saved.
        sides = make_sides(experiment, train, test, run_cfg.seed, args.optimizer)
        check_sides(sides, experiment)
        write_splits(sides, results_root / experiment / "splits.json")
        for arch in args.archs or spec.archs:
            # Step 3: the recipe (the table's row, flags override) and the shared init.pt.
            hp, rate, rounds = recipe(experiment, arch, args)
            folder = f"ticket_transfer/{experiment}/{arch}"
            config = experiment_config(data_cfg, run_cfg, hp, experiment=experiment, arch=arch,
                                       num_classes=spec.num_classes, prune_rate=rate)
            ctx = Context(experiment, arch, hp, rate, spec.num_classes, run_cfg.seed, run_cfg.force,
                          device, config, ckpt_root=Path(run_cfg.checkpoint_dir) / folder,
                          results_root=Path(run_cfg.results_dir) / folder)
            print(f"{experiment} / {arch}: {spec.what}; sides {', '.join(s.name for s in sides)}; "
                  f"{rounds} rounds at rate {rate:g} (output layer {rate / 2:g}), {hp.epochs} epochs, "
                  f"batch {hp.batch_size}, lr {hp.lr:g}")
            # Step 4: IMP on every side; each round the transferred tickets and the controls.
            rows += run_experiment(ctx, sides, rounds, args.controls)

    # Step 5: the summary table.
    merged = write_summary(rows, results_root / "summary.csv")
    ran = {(r["experiment"], r["arch"]) for r in rows}
    print_table([r for r in merged if (r["experiment"], r["arch"]) in ran], out=print)
    print(f"wrote {results_root / 'summary.csv'}")


if __name__ == "__main__":
    main()
