"""Task 3: lottery tickets — one-shot and iterative magnitude pruning (IMP) with rewinding.

    python lottery_imp.py                                   # one-shot + IMP at 50/70/90%
    python lottery_imp.py --controls reinit random          # + the two controls
    python lottery_imp.py --rewind checkpoints/dense/epoch_010.pt   # late rewinding

A ticket = a mask from the magnitudes of trained weights (`--from`) applied to rewound weights
(`--rewind`: init.pt, or an early epoch), retrained with the standard recipe. IMP repeats
train → prune ≤ --imp-rate of the survivors → rewind → retrain, landing on every target.
Writes checkpoints/<run>/<method>/sparsity_<s>/{mask.pt,start.pt,final.pt},
results/<run>/<method>/sparsity_<s>/trajectory.csv and results/<run>/summary.csv; see
docs/lottery_imp.md. An interrupted ticket (IMP rounds included) resumes after its last epoch.

Which layers are pruned: by default every Conv2d and Linear weight, the classifier included.
open_lth leaves the classifier of its CIFAR ResNets whole; `--ignore-layers linear` does the same
here (ignored layers are absent from mask.pt; sparsities count the remaining layers' weights).
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
from pathlib import Path

from data import load_from_config
from models import model_from_checkpoint, read_checkpoint
from utils.errors import UserError, cli_main
from utils.experiment import check_fractions, task_parser, task_setup
from utils.lottery import (CONTROLS, check_imp_history, checkpoint_label, imp_schedule,
                           imp_zero_counts, load_inputs, print_table,
                           random_control_mask, reinitialised, rewound, run_ticket, source_weights,
                           ticket_folder, write_summary)
from utils.lottery import magnitude_mask_with_zeros
from utils.pruning import ScoreChoice, magnitude_choice, num_to_prune, without_layers
from utils.train import evaluate


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_path", default=None,
                        help="trained weights whose magnitudes choose the mask "
                             "(default: <checkpoint-dir>/dense/epoch_160.pt)")
    parser.add_argument("--rewind", default=None,
                        help="weights the survivors are reset to (default: <checkpoint-dir>/dense/"
                             "init.pt; an early epoch's checkpoint gives late rewinding)")
    parser.add_argument("--mode", default="both", choices=("oneshot", "imp", "both"))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                        help="target fractions of the prunable weights removed")
    parser.add_argument("--imp-rate", type=float, default=0.2,
                        help="the most one IMP round removes of the weights still alive")
    parser.add_argument("--controls", nargs="*", default=[], choices=CONTROLS,
                        help="reinit: the one-shot mask, fresh init; random: random mask, same "
                             "per-layer sparsity, rewind weights")
    parser.add_argument("--ignore-layers", nargs="+", default=[], metavar="NAME",
                        help="layers left out of pruning (kept whole), e.g. linear (open_lth's "
                             "ResNet default); default: none, every Conv2d/Linear weight is pruned")
    parser.add_argument("--run-name", default=None,
                        help="folder under checkpoints/ and results/ (default: lottery, or "
                             "lottery_rewind_EEE when --rewind is a later epoch)")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    sparsities = check_fractions(args.sparsities, "--sparsities")
    imp_targets = [s for s in sparsities if s > 0]  # sparsity 0 needs no IMP round
    schedule = imp_schedule(imp_targets, args.imp_rate)  # also validates --imp-rate
    if args.mode == "imp" and not schedule and not args.controls:
        raise UserError("nothing to run: IMP needs a --sparsities value above 0")

    # Step 1: settings, and the two input checkpoints (checked before the data is loaded).
    setup = task_setup(args, load_data=False)
    dense_dir = setup.checkpoint_dir / "dense"
    from_path = Path(args.from_path or dense_dir / "epoch_160.pt")
    rewind_path = Path(args.rewind or dense_dir / "init.pt")
    from_ckpt, rewind_ckpt = load_inputs(from_path, rewind_path)
    rewind_epoch = int(rewind_ckpt.get("epoch", 0))
    run_name = args.run_name or ("lottery" if rewind_epoch == 0 else f"lottery_rewind_{rewind_epoch:03d}")
    arch, seed, device = rewind_ckpt["arch"], setup.run.seed, setup.device
    config = setup.config(arch=arch, shortcut=(rewind_ckpt.get("config") or {}).get("shortcut", "B"),
                          mask_from=checkpoint_label(from_path), from_epoch=from_ckpt.get("epoch"),
                          rewind_to=checkpoint_label(rewind_path), rewind_epoch=rewind_epoch)
    candidates = without_layers(source_weights(from_ckpt), args.ignore_layers)
    ignored = sorted(set(source_weights(from_ckpt)) - set(candidates))
    if ignored:  # only when used, so runs without the flag keep their identity
        config["ignore_layers"] = ignored
    extra = {"widths": rewind_ckpt.get("widths")}
    setup.train, setup.test = load_from_config(setup.data, device)
    ticket = dict(setup=setup, arch=arch, config=config, run_name=run_name, checkpoint_extra=extra)
    print(f"{run_name}: masks from {from_path} (epoch {from_ckpt.get('epoch')}), "
          f"survivors rewound to {rewind_path} (epoch {rewind_epoch})")

    # Step 2: the dense network the masks come from, on the same test set.
    dense_weights = candidates
    n = sum(w.numel() for w in dense_weights.values())
    dense_acc = evaluate(model_from_checkpoint(from_ckpt, device), setup.test,
                         precision=setup.hp.precision)[1]
    rows = []

    # Step 3: one-shot tickets — one mask per sparsity from --from, rewound, retrained.
    # chosen_by_score: the share of a mask's removals |w| decided, not ties at the cut broken by
    # position (utils.pruning.ScoreChoice); the controls carry their one-shot mask's
    oneshot_masks = {s: magnitude_mask_with_zeros(dense_weights, num_to_prune(s, n)) for s in sparsities}
    oneshot_chosen = {s: magnitude_choice(dense_weights, m).share for s, m in oneshot_masks.items()}
    if args.mode in ("oneshot", "both"):
        for s, mask in oneshot_masks.items():
            rows.append(run_ticket(method="oneshot", sparsity=s, round_no=1, mask=mask,
                                   model=rewound(rewind_ckpt, mask, device),
                                   chosen_by_score=oneshot_chosen[s], **ticket))

    # Step 4: IMP — round r's mask from round r−1's trained weights (round 1: --from), earlier
    # zeros kept, survivors rewound to the same --rewind weights every round.
    if args.mode in ("imp", "both"):
        check_imp_history(setup, run_name, schedule, args.imp_rate)
        counts = imp_zero_counts(schedule, imp_targets, n, args.imp_rate)
        source, prev_mask, choice = dense_weights, None, ScoreChoice()  # over every round's removals
        print(f"IMP: {len(schedule)} rounds x {setup.hp.epochs} epochs, sparsities "
              + ", ".join(f"{100 * s:g}%" for s in schedule))
        for r, (s, zeros) in enumerate(zip(schedule, counts), start=1):
            mask = magnitude_mask_with_zeros(source, zeros, prev_mask)
            magnitude_choice(source, mask, prev_mask, choice=choice)
            history = {"imp_rate": args.imp_rate, "imp_schedule": schedule[:r]}
            rows.append(run_ticket(method="imp", sparsity=s, round_no=r, mask=mask,
                                   model=rewound(rewind_ckpt, mask, device),
                                   extra_config=history, chosen_by_score=choice.share, **ticket))
            final = setup.checkpoint_dir / ticket_folder(run_name, "imp", s) / "final.pt"
            source = without_layers(source_weights(read_checkpoint(final, hint="python lottery_imp.py")),
                                    args.ignore_layers)
            prev_mask = mask

    # Step 5: controls on the one-shot tickets — same mask, fresh init; random mask, same
    # per-layer sparsity, rewind weights. A winning ticket beats both.
    for s, mask in oneshot_masks.items():
        if "reinit" in args.controls:
            rows.append(run_ticket(method="reinit", sparsity=s, round_no=1, mask=mask,
                                   model=reinitialised(rewind_ckpt, mask, seed, device),
                                   chosen_by_score=oneshot_chosen[s], **ticket))
        if "random" in args.controls:
            random_mask = random_control_mask(mask, seed, s)
            rows.append(run_ticket(method="random", sparsity=s, round_no=1, mask=random_mask,
                                   model=rewound(rewind_ckpt, random_mask, device),
                                   chosen_by_score=oneshot_chosen[s], **ticket))

    # Step 6: the summary table.
    merged = write_summary(rows, setup.results_dir / run_name / "summary.csv", dense_acc)
    print_table(merged, dense_acc, out=print)
    print(f"wrote {setup.results_dir / run_name / 'summary.csv'}")


if __name__ == "__main__":
    main()
