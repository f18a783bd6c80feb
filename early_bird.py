"""Task 4: Early-Bird tickets, channels pruned by BatchNorm scaling factors early in training.

    python early_bird.py                                  # tickets at epochs 10 30 50 100, ratios 0.3 0.5
    python early_bird.py --ticket-epochs auto             # tickets at the detected Early-Bird epoch
    python early_bird.py --retrain-from scratch           # same compact nets, fresh initialisation
    python early_bird.py --detect-only                    # only detection.json and the distance CSVs
    python early_bird.py --ticket-epochs auto --retrain-from scratch --retrain-schedule remaining
                                                          # the authors' released retraining
    python early_bird.py --detector-pool all --detect-only   # the authors' pool: every BatchNorm

Reads the dense run (train_dense.py): its epoch_EEE.pt checkpoints and bn_history.pt. Writes
checkpoints/early_bird/epoch_EEE/ratio_R/{compact.pt,final.pt},
results/early_bird/epoch_EEE/ratio_R/trajectory.csv, results/early_bird/summary.csv,
results/early_bird/detection.json and mask_distance_ratio_R.csv; see docs/early_bird.md.

A ticket is identified by the hash of the dense weights it is drawn from, not by the dense run's
path: moving the checkpoint folder (and passing the new --checkpoint-dir) keeps finished tickets
finished. summary.csv keeps the rows of earlier commands for other (epoch, ratio) pairs, and a
rerun of a finished command re-times nothing and writes no file (timings live in speed.json).
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
import functools
import sys
from pathlib import Path

import torch

from models import count_params, load_checkpoint, get_model, model_from_checkpoint, read_checkpoint
from utils.channels import (block_gammas, channel_chosen_by_score, compact_model, count_flops,
                            forward_seconds, prunable_bn_names, select_channels)
from utils.dense_run import dense_weights_at
from utils.early_bird import (POOLS, SCHEDULES, EpochOffset, check_dense_checkpoints, check_detector,
                              dense_checkpoint, dense_hint, detect, load_bn_history, parse_ticket_epochs,
                              remaining_recipe, training_flops, write_detection)
from utils.config import TrainConfig
from utils.errors import UserError, cli_main
from utils.experiment import check_fractions, pct_name, task_parser, task_setup
from utils.io import _fmt, load_csv, load_json, save_csv, save_json
from utils.pruning import weights_fingerprint
from utils.train import SummaryFields, evaluate, plan_run, seeded, train_run

CIFAR10_TRAIN_IMAGES = 50000  # images per dense epoch when the dense run used them all
SUMMARY_COLUMNS = [
    "ticket_epoch", "ratio", "dense_acc", "pruned_acc", "retrained_acc", "params", "flops",
    "dense_epoch_acc", "start_acc", "retrain_from", "channels_kept", "channels_total",
    "forced_channels", "dense_params", "dense_flops", "params_ratio", "flops_ratio",
    "train_flops", "dense_train_flops", "train_flops_ratio", "dense_forward_ms",
    "forward_ms", "speedup", "speed_device", "retrain_schedule", "retrain_epochs", "collapsed_layers",
    "chosen_by_score"]


TICKET_OUTPUTS = ("compact.pt", "final.pt")


def speed_of(path, args, device, fresh):
    """The ticket's saved timings (speed.json) when they were measured the same way on this
    device kind, else None (time it). `fresh` not None: the run trains again, so time it again."""
    if fresh is not None or not path.is_file():
        return None
    speed = load_json(path, f"delete {path} to time the ticket again")
    same = (speed.get("speed_device") == str(device) and speed.get("speed_batch") == args.speed_batch
            and speed.get("speed_repeats") == args.speed_repeats)
    return speed if same and {"dense_forward_ms", "forward_ms"} <= speed.keys() else None


def merge_rows(path, rows):
    """This command's rows plus the rows of an earlier summary.csv for other (epoch, ratio)
    tickets, sorted by ticket epoch then ratio: nothing an earlier command measured is dropped."""
    def key(r):
        return int(r["ticket_epoch"]), float(r["ratio"])
    new = {key(r) for r in rows}
    old = [r for r in load_csv(path) if key(r) not in new] if path.is_file() else []
    return sorted(old + rows, key=key)


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--dense-run", default=None,
                        help="folder of the dense run (train_dense.py); default <checkpoint-dir>/dense")
    parser.add_argument("--ticket-epochs", nargs="+", default=["10", "30", "50", "100"],
                        help="dense epochs to draw tickets at, or 'auto' = the detected Early-Bird epoch per ratio")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5],
                        help="fractions of the prunable channels removed")
    parser.add_argument("--retrain-from", choices=("ticket", "scratch"), default="ticket",
                        help="ticket: the pruned weights; scratch: the compact net freshly initialised")
    parser.add_argument("--retrain-schedule", choices=SCHEDULES, default="full",
                        help="full: a new --epochs schedule from --lr (the paper's text); remaining: epochs "
                             "e+1 … E of the dense run at its learning rates and BN-L1 penalty (the authors' code)")
    parser.add_argument("--detector-pool", choices=POOLS, default="inner",
                        help="channels the detector thresholds: inner (the blocks' bn1, the ones pruned) or "
                             "all (every BatchNorm, the authors' code); the pruning stays on the inner ones")
    parser.add_argument("--eb-eps", type=float, default=0.1,
                        help="Early-Bird threshold on the mask distance")
    parser.add_argument("--eb-window", type=int, default=5,
                        help="masks compared: the newest and the window-1 before it")
    parser.add_argument("--detect-only", action="store_true",
                        help="write detection.json and the distance matrices, then stop")
    parser.add_argument("--run-name", default=None,
                        help="output folder name; default early_bird, plus _<dense run name> for a "
                             "dense run not named dense, _scratch with --retrain-from scratch, _remaining "
                             "with --retrain-schedule remaining, _pool_all with --detector-pool all")
    parser.add_argument("--speed-batch", type=int, default=128, help="batch size of the timed forward pass")
    parser.add_argument("--speed-repeats", type=int, default=10, help="timed forward passes per network")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)

    # Step 1: flags and the dense run (checked before any data is loaded).
    ratios = check_fractions(args.ratios, "--ratios")
    ticket_epochs = parse_ticket_epochs(args.ticket_epochs)
    check_detector(args.eb_eps, args.eb_window)
    if args.speed_batch < 1 or args.speed_repeats < 1:
        raise UserError("--speed-batch and --speed-repeats must be >= 1")
    dense_run = Path(args.dense_run or Path(args.checkpoint_dir) / "dense")
    hint = dense_hint(dense_run)
    if not dense_run.is_dir():
        raise UserError(f"dense run {dense_run} not found; train it first: {hint}")
    dense_config = read_checkpoint(dense_run / "init.pt", hint=hint).get("config") or {}
    history = load_bn_history(dense_run / "bn_history.pt", hint)
    arch, shortcut = dense_config.get("arch", "resnet20"), dense_config.get("shortcut", "B")
    full_names = prunable_bn_names(n for n, m in get_model(arch, shortcut=shortcut).named_modules())
    if prunable_bn_names(history) != full_names:
        raise UserError(f"{dense_run}/bn_history.pt does not belong to a {arch}; "
                        f"make it again with: {hint} --force")
    final_epoch = int(dense_config.get("epochs", len(next(iter(history.values()))) - 1))
    name = args.run_name or ("early_bird" + ("" if dense_run.name == "dense" else f"_{dense_run.name}")
                             + ("_scratch" if args.retrain_from == "scratch" else "")
                             + ("_remaining" if args.retrain_schedule == "remaining" else "")
                             + ("_pool_all" if args.detector_pool == "all" else ""))
    ckpt_root, res_root = Path(args.checkpoint_dir) / name, Path(args.results_dir) / name
    if ticket_epochs is not None and not args.detect_only:  # fail before writing anything
        check_dense_checkpoints(dense_run, ticket_epochs, final_epoch, hint)

    # Step 2: Early-Bird detection from the γ history alone.
    detection, matrices = detect(history, ratios, args.eb_eps, args.eb_window, args.detector_pool)
    write_detection(detection, matrices, res_root)
    found = {r: detection["ratios"][f"{r:g}"]["eb_epoch"] for r in ratios}
    print("Early-Bird epoch (eps %g, window %d, %s pool): %s" % (args.eb_eps, args.eb_window, args.detector_pool, ", ".join(
        f"ratio {r:g} -> {e if e is not None else 'none'}" for r, e in found.items())))
    if args.detect_only:
        return

    # Step 3: the tickets to draw, (epoch, ratio); every checkpoint they need must exist.
    if ticket_epochs is None:
        tickets = sorted((e, r) for r, e in found.items() if e is not None)
        if not tickets:
            raise UserError(f"no Early-Bird epoch detected for any ratio within {len(history[full_names[0]])} "
                            f"epochs (eps {args.eb_eps:g}, window {args.eb_window}); pass --ticket-epochs "
                            "or a larger --eb-eps")
        for r in [r for r, e in found.items() if e is None]:
            print(f"note: no Early-Bird epoch for ratio {r:g}; skipped (raise --eb-eps or pass "
                  "--ticket-epochs)", file=sys.stderr)
        check_dense_checkpoints(dense_run, [], final_epoch, hint)  # unsaved epochs are replayed
    else:  # explicit epochs: their checkpoints were checked in Step 1
        tickets = [(e, r) for e in ticket_epochs for r in ratios]
    if args.retrain_schedule == "remaining":  # every ticket must leave dense epochs to train
        for e, _ in tickets:
            remaining_recipe(TrainConfig(), dense_config, e)

    # Step 4: data, and the trained dense network: accuracy, size, cost, timing reference.
    setup = task_setup(args)
    device, seed = setup.device, setup.run.seed
    precision = setup.hp.precision
    dense, _ = load_checkpoint(dense_checkpoint(dense_run, final_epoch), device, hint)
    dense_params, dense_flops = count_params(dense), count_flops(dense)
    dense_images = dense_config.get("train_subset") or CIFAR10_TRAIN_IMAGES
    dense_train_flops = training_flops(final_epoch, dense_images, dense_flops)
    dense.to(memory_format=torch.channels_last)  # the layout training and evaluation use
    speed_x = seeded(lambda: torch.rand(args.speed_batch, 3, 32, 32), seed, "speed").to(
        device, memory_format=torch.channels_last)
    print(f"dense {arch} (epoch {final_epoch}): {dense_params:,} params, {dense_flops / 1e6:.1f} MFLOPs/image")
    # accuracies on the test set, evaluated only for a ticket not finished already (a finished
    # ticket's row in summary.csv keeps them)
    accuracy = functools.cache(lambda name, model: evaluate(model, setup.test, precision=precision)[1])
    summary_path = res_root / "summary.csv"
    earlier = {(int(r["ticket_epoch"]), float(r["ratio"])): r for r in (load_csv(summary_path) if summary_path.is_file() else [])}

    # Step 5: per ticket: select channels, build the compact net, measure it, retrain it.
    rows, ticket_model, ticket_at = [], None, None
    for epoch, ratio in tickets:
        if ticket_at != epoch:
            ticket_ckpt, _ = dense_weights_at(  # saved epoch_EEE.pt, else a checked replay
                dense_run, epoch, dense_results=Path(args.results_dir) / dense_run.name,
                replay_dir=ckpt_root / "replay", replay_results=res_root / "replay",
                data_dir=args.data_dir, device=device, download=not args.no_download, hint=hint)
            ticket_model = model_from_checkpoint(ticket_ckpt, device)
            ticket_at = epoch
            # the ticket's identity: the weights it is drawn from, wherever the folder lies
            dense_sha256 = weights_fingerprint(ticket_ckpt["model"])
        gammas = block_gammas(ticket_model)
        selection = select_channels(gammas, ratio)
        # every block keeps a channel (no layer collapses); chosen_by_score: the share of removed
        # channels whose |γ| was below the lowest kept one, not a tie at it
        chosen = channel_chosen_by_score(gammas, selection)
        widths = selection.widths
        compact = compact_model(ticket_model, selection.keep)
        params, flops = count_params(compact), count_flops(compact)

        sub = Path(f"epoch_{epoch:03d}") / pct_name(ratio, "ratio")
        # the retraining recipe: a new schedule (the paper's text), or the rest of the dense one
        hp, offset, bn_l1, schedule = setup.hp, 0, 0.0, {}
        if args.retrain_schedule == "remaining":
            hp, offset = remaining_recipe(setup.hp, dense_config, epoch), epoch
            bn_l1 = float(dense_config.get("bn_l1", 0.0))  # the authors keep the slimming penalty on
            schedule = {"retrain_schedule": "remaining", "epochs": hp.epochs, "lr": hp.lr,
                        "milestones": list(hp.milestones), "bn_l1": bn_l1}
        config = setup.config(arch=arch, shortcut=shortcut, dense_sha256=dense_sha256, ticket_epoch=epoch,
                              ratio=ratio, retrain_from=args.retrain_from, widths=widths, **schedule)
        plan = plan_run(ckpt_root / sub, res_root / sub, config, TICKET_OUTPUTS, setup.run.force)
        old = earlier.get((epoch, ratio)) if plan.skip else None
        if old is not None and old.get("retrained_acc") == str(_fmt(plan.summary["test_acc"])):
            dense_acc, pruned_acc, dense_epoch_acc = (float(old[k]) for k in ("dense_acc", "pruned_acc", "dense_epoch_acc"))
        else:
            dense_acc, pruned_acc = accuracy("dense", dense), evaluate(compact, setup.test, precision=precision)[1]
            dense_epoch_acc = accuracy(f"epoch {epoch}", ticket_model)
        speed = speed_of(res_root / sub / "speed.json", args, device, None if plan.skip else {})
        if speed is None:  # timed once per trained ticket, kept beside its trajectory
            dense_s, compact_s = forward_seconds(
                [dense, compact.to(memory_format=torch.channels_last)], speed_x, args.speed_repeats)
            speed = {"dense_forward_ms": 1e3 * dense_s, "forward_ms": 1e3 * compact_s,
                     "speed_device": str(device), "speed_batch": args.speed_batch,
                     "speed_repeats": args.speed_repeats}
            save_json(speed, res_root / sub / "speed.json")
        if args.retrain_from == "scratch":  # same widths, a seeded fresh initialisation
            compact = seeded(lambda: get_model(arch, shortcut=shortcut, widths=widths), seed, "scratch").to(device)

        channels = {p: i for p, i in zip(
            [n[:-len(".bn1")] for n in full_names], selection.indices())}
        summary = train_run(
            compact, setup.train, setup.test, hp, arch=arch, config=config, seed=seed,
            ckpt_dir=ckpt_root / sub, results_dir=res_root / sub, force=plan.fresh, bn_l1=bn_l1,
            callbacks=[SummaryFields(collapsed_layers=[], chosen_by_score=chosen)]
            + ([EpochOffset(offset)] if offset else []),
            save_as=[(0, "compact.pt"), (hp.epochs, "final.pt")], outputs=TICKET_OUTPUTS,
            checkpoint_extra={"widths": widths, "channels": channels},
            desc=f"epoch {epoch} ratio {ratio:g}", **setup.train_kwargs())
        dense_s, compact_s = speed["dense_forward_ms"] / 1e3, speed["forward_ms"] / 1e3

        train_flops = (training_flops(epoch, dense_images, dense_flops)
                       + training_flops(hp.epochs, len(setup.train), flops))
        rows.append({
            "ticket_epoch": epoch, "ratio": ratio, "dense_acc": dense_acc, "pruned_acc": pruned_acc,
            "retrained_acc": summary["test_acc"], "params": params, "flops": flops,
            "dense_epoch_acc": dense_epoch_acc, "start_acc": summary["start_test_acc"],
            "retrain_from": args.retrain_from, "channels_kept": selection.kept,
            "channels_total": selection.total, "forced_channels": selection.forced,
            "dense_params": dense_params, "dense_flops": dense_flops,
            "params_ratio": params / dense_params, "flops_ratio": flops / dense_flops,
            "train_flops": train_flops, "dense_train_flops": dense_train_flops,
            "train_flops_ratio": train_flops / dense_train_flops,
            "dense_forward_ms": 1e3 * dense_s, "forward_ms": 1e3 * compact_s,
            "speedup": dense_s / compact_s, "speed_device": speed["speed_device"],
            "retrain_schedule": args.retrain_schedule, "retrain_epochs": hp.epochs,
            "collapsed_layers": "", "chosen_by_score": summary.get("chosen_by_score", chosen)})
        save_csv(merge_rows(res_root / "summary.csv", rows), res_root / "summary.csv", SUMMARY_COLUMNS)
        print(f"epoch {epoch} ratio {ratio:g}: pruned {pruned_acc:.2f}% -> retrained "
              f"{summary['test_acc']:.2f}% (dense {dense_acc:.2f}%), {params / dense_params:.2f}x params, "
              f"{flops / dense_flops:.2f}x FLOPs, {dense_s / compact_s:.2f}x faster, "
              f"{train_flops / dense_train_flops:.2f}x training FLOPs")
    print(f"summary: {res_root / 'summary.csv'}")


if __name__ == "__main__":
    main()
