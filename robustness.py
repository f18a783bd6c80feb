"""Bonus: pruning and adversarial robustness (Li et al. 2020, arXiv 2003.05733).

    python robustness.py                                   # evaluate, adversarial, size
    python robustness.py --experiments evaluate            # attack every saved checkpoint
    python robustness.py --experiments adversarial --sparsities 0.5 0.9

evaluate:    clean / FGSM / PGD accuracy of every dense and pruned checkpoint under
             --checkpoint-dir (Tasks 1-4), one row each.
adversarial: for --arch (resnet20), a natural and a PGD-trained dense network, then tickets at
             each sparsity: mask from either dense network's final weights, rewound to the
             shared initialisation, trained naturally or with PGD ("boosting tickets" = mask from
             the PGD network, trained with PGD).
size:        the same for --large-arch (resnet56).

Writes checkpoints/robustness/<arch>/..., results/robustness/<arch>/... and
results/robustness/{summary.csv, tickets.csv}; see docs/robustness.md. A ticket records the
hash of the dense weights its mask came from (mask_source_sha256) and is reused only when they
match; an interrupted run resumes after its last epoch.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
import sys

from models import ARCHS, get_model, load_checkpoint, prunable_weights
from utils.attacks import adversarial_train_kwargs
from utils.config import check_attack
from utils.errors import UserError, cli_main
from utils.experiment import check_fractions, pct_name, task_parser, task_setup
from utils.io import save_csv
from utils.lottery import write_mask
from utils.pruning import collapsed_layers, global_magnitude_mask, magnitude_choice, weights_fingerprint
from utils.robustness import (MASK_SOURCES, SUMMARY_COLUMNS, TICKET_COLUMNS, TRAININGS, cached_robust_row,
                              find_checkpoints, merge_summary, ticket_table)
from utils.train import SummaryFields, plan_run, seeded, train_run

EXPERIMENTS = ("evaluate", "adversarial", "size")
MAKE_CHECKPOINTS = ("python train_dense.py, then prune_magnitude.py, lottery_imp.py, "
                    "early_bird.py (or: python robustness.py --experiments adversarial)")


def parse_args(argv):
    # The --adv-* group is left out: this script has its own attack flags and trains both ways.
    parser = task_parser(__doc__.splitlines()[0], adversarial=False)
    group = parser.add_argument_group("robustness")
    group.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS),
                       help="which experiments to run, in this order")
    group.add_argument("--eps", type=float, default=8.0, help="L∞ budget ε in 1/255 pixel units")
    group.add_argument("--step", type=float, default=2.0, help="PGD step size in 1/255 pixel units")
    group.add_argument("--train-steps", type=int, default=10,
                       help="PGD iterations per batch in adversarial training (and in the per-epoch "
                            "pgd_acc column); an epoch costs about train-steps+1 natural epochs")
    group.add_argument("--eval-steps", type=int, default=20, help="PGD iterations of the final evaluation")
    group.add_argument("--eval-subset", type=int, default=0,
                       help="first N test images attacked in the final evaluation (0 = all)")
    group.add_argument("--monitor-subset", type=int, default=1000,
                       help="first N test images attacked after every epoch for the trajectory's "
                            "fgsm_acc/pgd_acc columns (0 = all)")
    group.add_argument("--attack-batch", type=int, default=500, help="images per attack batch")
    group.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                       help="ticket sparsities of the adversarial and size experiments")
    group.add_argument("--arch", default="resnet20", help="architecture of the adversarial experiment")
    group.add_argument("--large-arch", default="resnet56", help="architecture of the size experiment")
    return parser.parse_args(argv)


def validate(args):
    check_attack(args.eps, args.step, args.eval_steps)
    check_attack(args.eps, args.step, args.train_steps, ("--eps", "--step", "--train-steps"))
    for flag in ("eval_subset", "monitor_subset"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0 (0 = all), got {getattr(args, flag)}")
    if args.attack_batch < 1:
        raise UserError(f"--attack-batch must be >= 1, got {args.attack_batch}")
    for flag in ("arch", "large_arch"):
        if getattr(args, flag) not in ARCHS:
            raise UserError(f"unknown --{flag.replace('_', '-')} {getattr(args, flag)!r}; "
                            f"choose one of {', '.join(ARCHS)}")
    args.sparsities = check_fractions(args.sparsities, "--sparsities")


class Evaluator:
    """Robust evaluation of saved checkpoints with this invocation's attack settings."""

    def __init__(self, setup, args):
        self.setup, self.args = setup, args
        self.attack = {"eps": args.eps, "step": args.step, "eval_steps": args.eval_steps,
                       "eval_subset": args.eval_subset, "test_subset": setup.data.test_subset,
                       "seed": setup.run.seed}

    def row(self, model_name, path, cache_dir, **extra):
        a = self.args
        return cached_robust_row(
            model_name, path, cache_dir / "robust.json", self.setup.test, self.attack,
            self.setup.device, force=self.setup.run.force, batch_size=a.attack_batch, **extra)


def evaluate_existing(setup, evaluator, alone):
    """Step 2: one row per dense / pruned checkpoint the other tasks saved."""
    found = find_checkpoints(setup.checkpoint_dir)
    if not found:
        message = f"nothing to evaluate under {setup.checkpoint_dir}; make checkpoints with: {MAKE_CHECKPOINTS}"
        if alone:  # nothing at all can be done
            raise UserError(message)
        print(f"evaluate: {message}", file=sys.stderr)
        return []
    rows = []
    for name, path in found:
        try:
            rows.append(evaluator.row(name, path, setup.results_dir / "robustness" / "evaluate" / name,
                                      experiment="evaluate"))
        except UserError as e:  # one bad file should not cost the other rows
            print(f"evaluate: skipping {name}: {e}", file=sys.stderr)
            continue
        print(_fmt(rows[-1]))
    return rows


def ticket_experiment(setup, args, evaluator, arch, experiment):
    """Steps 3-4: dense natural / PGD networks of `arch`, then the 2x2 grid of tickets per sparsity."""
    hp, seed = setup.hp, setup.run.seed
    ck_root = setup.checkpoint_dir / "robustness" / arch
    res_root = setup.results_dir / "robustness" / arch

    def train(model, run, training, save_as, chosen_by_score=None, **kw):
        adv = {"adv_train": training == "pgd", "adv_eps": args.eps, "adv_step": args.step,
               "adv_steps": args.train_steps, "adv_monitor_subset": args.monitor_subset}
        config = setup.config(arch=arch, shortcut="B", run_name=f"robustness/{arch}/{run}",
                              training=training, **adv, **{k: v for k, v in kw.items() if k != "mask"})
        mask = kw.get("mask")
        outputs = [name for _, name in save_as] + (["mask.pt"] if mask is not None else [])
        plan = plan_run(ck_root / run, res_root / run, config, outputs, setup.run.force)
        if mask is not None and not plan.skip:  # a rerun of a finished ticket writes nothing
            write_mask(ck_root / run / "mask.pt", mask, setup.run.force or plan.fresh)
        extra = adversarial_train_kwargs(setup.test, seed, args.eps, args.step, args.train_steps,
                                         args.monitor_subset, train=training == "pgd",
                                         precision=hp.precision)
        train_run(model, setup.train, setup.test, hp, arch=arch, config=config, seed=seed,
                  ckpt_dir=ck_root / run, results_dir=res_root / run, force=plan.fresh,
                  save_as=save_as, mask=mask, outputs=outputs, desc=f"{arch} {run}",
                  callbacks=[SummaryFields(chosen_by_score=chosen_by_score)], **extra)
        row = evaluator.row(f"robustness/{arch}/{run}", ck_root / run / "final.pt", res_root / run,
                            experiment=experiment, mask_from=kw.get("mask_from", ""))
        # the mask's collapse facts (utils.pruning): its empty layers, and how many of its
        # removals |w| decided rather than a tie at the cut
        row.update(collapsed_layers=";".join(collapsed_layers(mask)) if mask is not None else "",
                   chosen_by_score="" if chosen_by_score is None else chosen_by_score)
        print(_fmt(row))
        return row

    # Step 3a: the dense networks, natural and PGD-AT, from one seeded initialisation.
    rows, final = [], {}
    for training in TRAININGS:
        model = seeded(lambda: get_model(arch), seed).to(setup.device)
        rows.append(train(model, f"dense/{training}", training,
                          [(0, "init.pt"), (hp.epochs, "final.pt")]))
        final[training] = ck_root / "dense" / training

    # Step 3b: tickets. The mask ranks the trained weights of one dense network (global
    # magnitude); the survivors are rewound to the shared init and trained either way. The
    # ticket records the hash of those weights, so a changed dense network is never reused.
    for sparsity in args.sparsities:
        for mask_from in MASK_SOURCES:
            trained, trained_ckpt = load_checkpoint(final[mask_from] / "final.pt")
            mask = global_magnitude_mask(prunable_weights(trained), sparsity)
            chosen = magnitude_choice(prunable_weights(trained), mask).share
            source_sha256 = weights_fingerprint(trained_ckpt["model"])
            for training in TRAININGS:
                run = f"ticket_{mask_from}_mask/{training}/{pct_name(sparsity, 'sparsity')}"
                model, _ = load_checkpoint(final[mask_from] / "init.pt", setup.device)
                rows.append(train(model, run, training, [(0, "start.pt"), (hp.epochs, "final.pt")],
                                  chosen_by_score=chosen, mask=mask, mask_from=mask_from, sparsity=sparsity,
                                  mask_source_sha256=source_sha256))
    return rows


def _fmt(row):
    return (f"{row['model']}: clean {row['clean_acc']:.2f}%  FGSM {row['fgsm_acc']:.2f}%  "
            f"PGD-{row['eval_steps']} {row['pgd_acc']:.2f}%  (sparsity {row['sparsity']:.3f}, "
            f"{row['training']})")


@cli_main
def main(argv=None):
    args = parse_args(argv)
    validate(args)

    # Step 1: settings, device, data on the device.
    setup = task_setup(args)
    evaluator = Evaluator(setup, args)
    out = setup.results_dir / "robustness"

    # Steps 2-4, each optional; rows land in one summary.
    rows = []
    if "evaluate" in args.experiments:
        rows += evaluate_existing(setup, evaluator, alone=set(args.experiments) == {"evaluate"})
    if "adversarial" in args.experiments:
        rows += ticket_experiment(setup, args, evaluator, args.arch, "adversarial")
    if "size" in args.experiments:
        rows += ticket_experiment(setup, args, evaluator, args.large_arch, "size")

    # Step 5: the summary (rows of earlier invocations with the same attack are kept) and the
    # ticket comparison table.
    summary = merge_summary(out / "summary.csv", rows)
    save_csv(summary, out / "summary.csv", SUMMARY_COLUMNS)
    tickets = ticket_table(summary)
    if tickets:
        save_csv(tickets, out / "tickets.csv", TICKET_COLUMNS)
    print(f"robustness: {len(rows)} rows this run, {len(summary)} in {out / 'summary.csv'}"
          + (f"; ticket comparison in {out / 'tickets.csv'}" if tickets else ""))


if __name__ == "__main__":
    main()
