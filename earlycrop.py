"""EarlyCroP (Rachwan et al. 2022): prune by gradient flow, once the weights stop moving fast.

    python earlycrop.py                                   # 5 methods x sparsities 0.6 0.9 0.98
    python earlycrop.py --methods earlycrop_s crop_s --sparsities 0.9
    python earlycrop.py --prune-epoch 10                  # prune at epoch 10, not the detected one
    python earlycrop.py --detector paper --detect-only    # the paper's formula; only detection.json

Reads the dense run (train_dense.py): init.pt, its trajectory's weight_distance and
distance_from_epoch1/norm_epoch1 (a dense run made before those columns is replayed, checked),
its checkpoints (an epoch it did not keep is replayed from init.pt, checked, into
checkpoints/earlycrop/replay/).
Writes checkpoints/earlycrop/<method>/sparsity_<s>/{mask.pt|compact.pt,start.pt,final.pt,scores.pt},
checkpoints/earlycrop/score_batches.pt, results/earlycrop/<method>/sparsity_<s>/,
results/earlycrop/detection.json and results/earlycrop/summary.csv; see docs/earlycrop.md.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
import sys
import time
from pathlib import Path

import torch

from models import model_from_checkpoint, read_checkpoint
from utils.channels import channel_chosen_by_score, compact_model, count_flops, prunable_bn_names, select_channels
from utils.crop import (channel_gate_scores, crop_scores, draw_score_batches,
                        random_channel_scores, score_batches_on, score_mask, step_schedule)
from utils.dense_run import dense_distances_from_epoch1, dense_trajectory, dense_weights_at
from utils.early_bird import dense_hint
from utils.earlycrop import (own_row, AT_INIT, DETECTORS, MEASURED, METHODS, STRUCTURED, SUMMARY_COLUMNS,
                             dense_seconds_until, detection_record, full_prunable, measure, other_rows,
                             train_flops_of)
from utils.errors import UserError, cli_main
from utils.experiment import check_fractions, pct_name, task_parser, task_setup
from utils.io import _fmt, load_csv, load_json, save_csv, save_json, save_torch
from utils.pruning import ScoreChoice, apply_mask, weights_fingerprint
from utils.train import SummaryFields, checkpoint, plan_run, select_device, train_run


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--dense-run", default=None,
                        help="folder of the dense run (train_dense.py); default <checkpoint-dir>/dense, "
                             "its trajectory in <results-dir>/<its name>")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="crop_u/crop_s: CroP at init; earlycrop_u/earlycrop_s: CroP at the detected "
                             "epoch; random_s: random channels at init")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.6, 0.9, 0.98],
                        help="fraction of prunable weights (-U) or prunable channels (-S) removed")
    parser.add_argument("--crop-batches", type=int, default=5,
                        help="unaugmented training batches (of --batch-size) the CroP scores use")
    parser.add_argument("--detector", choices=DETECTORS, default="authors",
                        help="authors: the authors' code, |d_t − d_{t−1}| < τ = (1 − s)·d_2 on "
                             "d_t = ‖θ_t − θ_1‖/‖θ_1‖ over all parameters, from epoch 3; paper: "
                             "|Δ_t − Δ_{t−1}| / Δ_1 < 1 − s on Δ_t = ‖θ_t − θ_0‖² over Conv/Linear "
                             "weights, from epoch 2")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the detector's 1 − sparsity replaced by this value (authors: the factor on "
                             "d_2; paper: the threshold on the ratio)")
    parser.add_argument("--detect-only", action="store_true",
                        help="write detection.json, then stop")
    parser.add_argument("--prune-by", type=int, default=100,
                        help="prune at this epoch if the detector has not fired (clamped to the dense run)")
    parser.add_argument("--prune-epoch", type=int, default=None,
                        help="prune EarlyCroP at this dense epoch instead of the detected one")
    parser.add_argument("--run-name", default="earlycrop", help="output folder name")
    parser.add_argument("--timing-steps", type=int, default=5,
                        help="timed training steps per table row (batch_ms, peak_mem_mb)")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)

    # Step 1: flags and the dense run (checked before any data is loaded).
    sparsities = check_fractions(args.sparsities, "--sparsities")
    methods = [m for m in METHODS if m in args.methods]
    if args.crop_batches < 1:
        raise UserError(f"--crop-batches must be >= 1, got {args.crop_batches}")
    if args.threshold is not None and not args.threshold > 0:
        raise UserError(f"--threshold must be > 0, got {args.threshold}")
    if args.prune_by < 2:
        raise UserError(f"--prune-by must be >= 2 (the detector starts at epoch 2), got {args.prune_by}")
    if args.timing_steps < 1:
        raise UserError(f"--timing-steps must be >= 1, got {args.timing_steps}")
    dense_run = Path(args.dense_run or Path(args.checkpoint_dir) / "dense")
    dense_results = Path(args.results_dir) / dense_run.name
    hint = dense_hint(dense_run)
    if not dense_run.is_dir():
        raise UserError(f"dense run {dense_run} not found; train it first: {hint}")
    init = read_checkpoint(dense_run / "init.pt", hint=hint)
    dense_config = init.get("config") or {}
    arch, shortcut = init["arch"], dense_config.get("shortcut", "B")
    final_epoch = int(dense_config.get("epochs", 0))
    if not (dense_run / f"epoch_{final_epoch:03d}.pt").is_file():
        raise UserError(f"dense run {dense_run} is unfinished (no epoch_{final_epoch:03d}.pt); finish it: {hint}")
    if args.train_subset != int(dense_config.get("train_subset") or 0):
        raise UserError(f"--train-subset {args.train_subset} differs from the dense run's "
                        f"{dense_config.get('train_subset') or 0}; pass --train-subset {dense_config.get('train_subset') or 0}")
    if args.prune_epoch is not None and not 0 <= args.prune_epoch <= final_epoch:
        raise UserError(f"--prune-epoch {args.prune_epoch} lies beyond the dense run's {final_epoch} epochs; "
                        f"pass 0 to {final_epoch}")
    dense_rows = dense_trajectory(dense_results, hint)
    ckpt_root, res_root = Path(args.checkpoint_dir) / args.run_name, Path(args.results_dir) / args.run_name

    # Step 2: when to prune, per sparsity, by both rules; `--detector` chooses which one prunes.
    rows_by_epoch = sorted(dense_rows, key=lambda r: int(float(r["epoch"])))
    delta = [float(r["weight_distance"]) for r in rows_by_epoch]
    prune_by = min(args.prune_by, final_epoch)
    recorded = all(r.get("distance_from_epoch1") not in (None, "") for r in rows_by_epoch[1:])
    distances = None  # the authors' rule's input; for an older dense run, from a checked replay
    if (recorded and final_epoch >= 2) or args.detector == "authors":
        distances = dense_distances_from_epoch1(
            dense_run, final_epoch if recorded else prune_by, dense_results=dense_results,
            replay_dir=ckpt_root / "replay", replay_results=res_root / "replay", data_dir=args.data_dir,
            device=select_device(args.device, args.deterministic), download=not args.no_download, hint=hint)
    detection = detection_record(args.detector, sparsities, args.threshold, prune_by, delta, distances,
                                 dense_config.get("milestones") or [], args.prune_epoch)
    if not (res_root / "detection.json").is_file() or load_json(res_root / "detection.json") != detection:
        save_json(detection, res_root / "detection.json")  # a rerun writes nothing new
    prune_at = {s: args.prune_epoch if args.prune_epoch is not None else detection["sparsities"][f"{s:g}"]["prune_epoch"]
                for s in sparsities}
    print(f"EarlyCroP prune epoch ({args.detector} rule): " + ", ".join(
        f"sparsity {s:g} -> {prune_at[s]}" + _how(detection["sparsities"][f"{s:g}"], args.prune_epoch)
        for s in sparsities))
    if args.detect_only:
        return

    # Step 3: data and the CroP score batches (a seeded draw of unaugmented training images).
    setup = task_setup(args)
    device, seed = setup.device, setup.run.seed
    draw = draw_score_batches(setup.train, args.crop_batches, setup.hp.batch_size, seed)
    batches_path = ckpt_root / "score_batches.pt"
    old = torch.load(batches_path, weights_only=True) if batches_path.is_file() else None
    if old is None or not torch.equal(old["indices"], draw["indices"]):
        save_torch(draw, batches_path)
    batches = score_batches_on(draw, device)
    init_fingerprint = weights_fingerprint(init["model"])
    n_full, channels_full = full_prunable(arch, shortcut)

    def start_weights(epoch):
        ckpt, _ = dense_weights_at(dense_run, epoch, dense_results=dense_results, replay_dir=ckpt_root / "replay",
                                   replay_results=res_root / "replay", data_dir=args.data_dir, device=device,
                                   download=not args.no_download, hint=hint)
        return model_from_checkpoint(ckpt, device)

    # Step 4: per method and sparsity: score, prune, train on with the retraining recipe.
    # the table's measured columns hold for one device, recorded beside it
    device_path = res_root / "summary_device.json"
    same_device = device_path.is_file() and load_json(device_path) == {"device": str(device)}
    earlier = load_csv(res_root / "summary.csv") if (res_root / "summary.csv").is_file() else []

    def measured(row, final_path):
        """The row with its measured columns: reused from the earlier table when the same run
        (same source, accuracy and device) was measured already, so a rerun re-times nothing."""
        same = next((r for r in earlier if same_device and r.get("source") == row["source"]
                     and r.get("method") == row["method"] and r.get("test_acc") == fmt(row["test_acc"])), None)
        if same is not None:
            return dict(row, **{k: number(same[k]) for k in MEASURED})
        return dict(row, **measure(
            read_checkpoint(final_path), setup.hp.batch_size, device, n_full, channels_full, args.timing_steps))

    dense_flops = count_flops(model_from_checkpoint(init))

    def costed(row, final_path):
        """The measured row with its training FLOPs (dense epochs before pruning, its own after)."""
        before, after = row.pop("epochs")
        return train_flops_of(measured(row, final_path), before, after, len(setup.train), dense_flops, final_epoch)

    rows = []
    for method in methods:
        for s in sparsities:
            epoch = 0 if method in AT_INIT else prune_at[s]
            sub = Path(method) / pct_name(s, "sparsity")
            ck_dir, res_dir = ckpt_root / sub, res_root / sub
            config = setup.config(arch=arch, shortcut=shortcut, dense_init=init_fingerprint, method=method,
                                  sparsity=s, prune_epoch=epoch, crop_batches=args.crop_batches)
            outputs = ["start.pt", "final.pt", "scores.pt", "compact.pt" if method in STRUCTURED else "mask.pt"]
            plan = plan_run(ck_dir, res_dir, config, outputs, setup.run.force)  # skip/resume/redo
            if plan.skip:
                print(f"{method} sparsity {s:g}: finished already ({res_dir / 'summary.json'}); "
                      "--force redoes it", file=sys.stderr)
            else:
                model = start_weights(epoch)
                t0 = time.perf_counter()
                if method in STRUCTURED:
                    scores = (random_channel_scores(model, seed) if method == "random_s"
                              else channel_gate_scores(model, batches))
                    selection = select_channels(scores, s)
                    model = compact_model(model, selection.keep)
                    names = [n[:-len(".bn1")] for n in prunable_bn_names(
                        n for n, _ in model.named_modules())]
                    extra = {"widths": selection.widths, "score_seconds": time.perf_counter() - t0,
                             "channels": dict(zip(names, selection.indices()))}
                    save_torch(dict(zip(names, scores)), ck_dir / "scores.pt")
                    save_torch(checkpoint(model, arch, 0, config, **extra), ck_dir / "compact.pt")
                    mask = None
                    chosen = channel_chosen_by_score(scores, selection)
                else:
                    mask = None  # earlycrop_u: the code's steps, re-scored each; crop_u: one step
                    choice = ScoreChoice()  # each step's removals against its own cut (utils.pruning)
                    for step in (step_schedule(s) if method == "earlycrop_u" else [s]):
                        scores = crop_scores(model, batches, mask)
                        before, mask = mask, score_mask(scores, step, mask)
                        choice.add(scores, mask, before)
                        apply_mask(model, mask)
                    extra = {"score_seconds": time.perf_counter() - t0}
                    chosen = choice.share
                    save_torch(scores, ck_dir / "scores.pt")
                    save_torch(mask, ck_dir / "mask.pt")
                train_run(model, setup.train, setup.test, setup.hp, arch=arch, config=config, seed=seed,
                          ckpt_dir=ck_dir, results_dir=res_dir, force=plan.fresh, mask=mask, outputs=outputs,
                          save_as=[(0, "start.pt"), (setup.hp.epochs, "final.pt")],
                          checkpoint_extra=dict(extra, prune_epoch=epoch),
                          callbacks=[SummaryFields(chosen_by_score=chosen)],
                          desc=f"{method} sparsity {s:g}", **setup.train_kwargs())
            rows.append(costed(own_row(method, s, epoch, ck_dir, res_dir, dense_rows), ck_dir / "final.pt"))
            print_row(rows[-1])

    # Step 5: the table: these runs, then the dense network and the other scripts' runs, at each
    # sparsity, every row measured on this device.
    dense_final = dense_run / f"epoch_{final_epoch:03d}.pt"
    dense_row = {"method": "dense", "structured": None, "sparsity": 0.0,
                 "test_acc": float(dense_rows[-1]["test_acc"]), "prune_epoch": None,
                 "train_seconds": dense_seconds_until(dense_rows, final_epoch),
                 "epochs": (final_epoch, 0), "source": str(dense_results / "summary.json")}
    rows.append(costed(dense_row, dense_final))
    for s in sparsities:
        found, missing = other_rows(s, args.checkpoint_dir, args.results_dir, dense_run, dense_rows)
        for row, final in found:
            rows.append(costed(row, final))
        for method, command in missing:
            rows.append({"method": method, "sparsity": s, "structured": method == "early_bird",
                         "source": f"missing; run: {command}"})
    done = {(r["method"], r["sparsity"]) for r in rows}
    kept = [r for r in earlier if r.get("method") in METHODS and (r["method"], float(r["sparsity"])) not in done]
    table = kept + rows  # earlier commands' own rows stay
    if [{k: fmt(r.get(k)) for k in SUMMARY_COLUMNS} for r in table] != earlier:
        save_csv(table, res_root / "summary.csv", SUMMARY_COLUMNS)
    if not same_device:
        save_json({"device": str(device)}, device_path)
    print(f"summary: {res_root / 'summary.csv'} ({len(rows)} rows)")


def _how(info, override):
    if override is not None:
        return " (set by --prune-epoch)"
    if not info["fired"]:
        return " (not fired: --prune-by)"
    if info["after_milestone"] is not None:
        return f" (fired just after the learning-rate milestone {info['after_milestone']})"
    return ""


def fmt(v):
    """A value as summary.csv writes it (to compare with the rows read back)."""
    return str(_fmt(v))


def number(text):
    """A number read back from summary.csv as it was measured: an int stays an int (so a rerun
    writes "81626368", not "8.16264e+07"), "" is None."""
    if text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def print_row(row):
    print(f"{row['method']} sparsity {row['sparsity']:g} (pruned at epoch {row['prune_epoch']}): "
          f"{row['test_acc']:.2f}%, weight sparsity {100 * row['weight_sparsity']:.1f}%, "
          f"{row['params']:,.0f} params, {row['train_seconds']:.0f} s", file=sys.stdout)


if __name__ == "__main__":
    main()
