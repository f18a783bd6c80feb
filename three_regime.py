"""Three-regime phase model of pruning: temperature x load grid, mode connectivity, CKA.

    python three_regime.py                                   # epochs axis, small grid
    python three_regime.py --axis batch-size                 # temperature = dense batch size
    python three_regime.py --grid paper                      # 16 x 9 cells, 3 copies (432 trainings)
    python three_regime.py --temperatures 10 50 --densities 0.1 0.5 --copies 2

Reproduces Zhou et al., "A Three-regime Model of Network Pruning" (ICML 2023) with ResNet-20.
Each (temperature, density) cell: the dense net at that temperature, every conv layer pruned by
magnitude to the density (Linear dense), retrained as k copies that differ only in data order and
augmentation; then linear mode connectivity (mc, barrier) and CKA between every pair of copies,
and the cell's regime (I, II-A, II-B). Writes checkpoints/three_regime/<axis>/<temp>/density_<d>/
{mask.pt,start.pt,copy_<k>/...}, results/three_regime/<axis>/<temp>/density_<d>/{copy_<k>/
trajectory.csv, lmc_<i>_<j>.csv, pairs.json}, results/three_regime/<axis>/{summary.csv,
regimes.json}; see docs/three_regime.md.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)
import itertools
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models import get_model, model_from_checkpoint, read_checkpoint
from utils.config import as_dict
from utils.early_bird import dense_hint
from utils.errors import UserError, cli_main
from utils.experiment import task_parser, task_setup
from utils.io import save_csv, save_json, save_torch
from utils.lottery import checkpoint_label, write_mask
from utils.pruning import apply_mask, collapsed_layers, magnitude_choice, weights_fingerprint
from utils.three_regime import (AXES, BN_BATCH, CKA_THRESHOLD, GRIDS, MC_THRESHOLD, SUMMARY_COLUMNS,
                                assign_regimes, check_epoch_checkpoints, check_grid, conv_density_mask, conv_weights,
                                dense_hp, density_name,
                                measure_pair, summary_row, temperature_name)
from utils.train import SummaryFields, checkpoint, evaluate, train_run


def parse_args(argv):
    parser = task_parser(__doc__.splitlines()[0], adversarial=False)
    g = parser.add_argument_group("the grid")
    g.add_argument("--axis", default="epochs", choices=AXES,
                   help="temperature: the dense run's epoch_EEE.pt (fewer epochs = hotter), or the "
                        "batch size of a dense net trained from its init.pt (smaller = hotter)")
    g.add_argument("--grid", default="small", choices=("small", "paper"),
                   help="small: 5 epochs (3 batch sizes) x 4 densities, 2 copies; paper: 16 (6) x 9, 3 copies")
    g.add_argument("--temperatures", type=int, nargs="+", default=None,
                   help="override the grid's temperatures (epochs, or batch sizes)")
    g.add_argument("--densities", type=float, nargs="+", default=None,
                   help="override the grid's densities: fractions of each conv layer's weights kept, in (0, 1]")
    g.add_argument("--copies", type=int, default=None, help="override the grid's copies per cell (>= 2)")
    g.add_argument("--dense-run", default=None,
                   help="folder of the dense run (train_dense.py); default <checkpoint-dir>/dense")
    m = parser.add_argument_group("measurements")
    m.add_argument("--lmc-points", type=int, default=11, help="points on the linear path, endpoints included")
    m.add_argument("--bn-batches", type=int, default=0,
                   help="un-augmented training batches that re-estimate BatchNorm statistics at each "
                        "path point (0 = all)")
    m.add_argument("--bn-batch-size", type=int, default=BN_BATCH,
                   help="images per BatchNorm re-estimation batch (the authors' lmc.py uses 64)")
    m.add_argument("--cka-images", type=int, default=6464,
                   help="first N un-augmented training images whose softmax outputs CKA compares")
    m.add_argument("--mc-threshold", type=float, default=MC_THRESHOLD,
                   help="Regime I: mc < -threshold (ours: the paper draws its lines by eye)")
    m.add_argument("--cka-threshold", type=float, default=CKA_THRESHOLD,
                   help="Regime II-B: cka >= threshold (ours: the paper draws its lines by eye)")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)

    # Step 1: the grid and the measurement settings, checked before anything is loaded.
    temperatures, densities, copies = GRIDS[args.axis][args.grid]
    temperatures = sorted(set(args.temperatures or temperatures))
    densities = sorted(set(args.densities or densities))
    copies = copies if args.copies is None else args.copies
    check_grid(temperatures, densities, copies, args.lmc_points)
    if args.bn_batches < 0:
        raise UserError(f"--bn-batches must be >= 0 (0 = all batches), got {args.bn_batches}")
    if args.cka_images < 2:
        raise UserError(f"--cka-images must be >= 2, got {args.cka_images}")
    if args.mc_threshold < 0:
        raise UserError(f"--mc-threshold must be >= 0 (Regime I is mc < -threshold), got {args.mc_threshold}")
    if args.bn_batch_size < 1:
        raise UserError(f"--bn-batch-size must be >= 1, got {args.bn_batch_size}")
    if not 0 <= args.cka_threshold <= 1:
        raise UserError(f"--cka-threshold must lie in [0, 1], got {args.cka_threshold}")

    # Step 2: the dense run: its init.pt, and on the epochs axis every temperature's checkpoint.
    dense_run = Path(args.dense_run or Path(args.checkpoint_dir) / "dense")
    hint = dense_hint(dense_run)
    init_ckpt = read_checkpoint(dense_run / "init.pt", hint=hint)
    dense_config = init_ckpt.get("config") or {}
    dense_epochs = int(dense_config.get("epochs", 160))
    if args.axis == "epochs":
        check_epoch_checkpoints(dense_run, temperatures, dense_epochs, hint)
    setup = task_setup(args)
    hp, seed, device, force = setup.hp, setup.run.seed, setup.device, setup.run.force
    arch, shortcut = init_ckpt["arch"], dense_config.get("shortcut", "B")
    ckpt_root = setup.checkpoint_dir / "three_regime" / args.axis
    res_root = setup.results_dir / "three_regime" / args.axis
    # the network the path is evaluated in (channels_last, the layout the data and training use)
    scratch = get_model(arch, shortcut=shortcut).to(device, memory_format=torch.channels_last)
    n_cells = len(temperatures) * len(densities)
    print(f"three_regime ({args.axis}): {len(temperatures)} temperatures x {len(densities)} densities x "
          f"{copies} copies = {n_cells * copies} retrainings of {hp.epochs} epochs")

    rows = []
    for temperature in temperatures:
        temp_name = temperature_name(args.axis, temperature)

        # Step 3: the dense net at this temperature and its test accuracy.
        if args.axis == "epochs":
            source_path = dense_run / f"epoch_{temperature:03d}.pt"
        else:  # trained here from the dense run's init.pt at batch size B, equal steps
            b_hp = dense_hp(hp, dense_config, temperature)
            source_path = ckpt_root / temp_name / "dense.pt"
            b_config = as_dict(setup.data, setup.run, b_hp) | {
                "arch": arch, "shortcut": shortcut, "axis": args.axis, "temperature": temperature,
                "init": checkpoint_label(dense_run / "init.pt"),
                "init_fingerprint": weights_fingerprint(init_ckpt["model"])}
            train_run(model_from_checkpoint(init_ckpt, device), setup.train, setup.test, b_hp, arch=arch,
                      config=b_config, ckpt_dir=ckpt_root / temp_name, results_dir=res_root / temp_name,
                      seed=seed, force=force,
                      save_as=[(b_hp.epochs, "dense.pt")], desc=f"dense batch {temperature}")
        source_ckpt = read_checkpoint(source_path, hint=hint)
        source = model_from_checkpoint(source_ckpt, device)
        dense_acc = evaluate(source, setup.test)[1]
        source_fp = weights_fingerprint(source_ckpt["model"])

        for density in densities:
            cell = Path(temp_name) / density_name(density)
            cell_ckpt, cell_res = ckpt_root / cell, res_root / cell

            # Step 4: prune every conv layer to the density by |w| (Linear dense); the pruned
            # weights are the common start of every copy.
            mask = conv_density_mask(conv_weights(source), density)
            # the share of removals |w| decided, each layer against its own cut (utils.pruning)
            chosen = magnitude_choice(conv_weights(source), mask, scope="layerwise").share
            write_mask(cell_ckpt / "mask.pt", mask, force)
            start = apply_mask(model_from_checkpoint(source_ckpt, device), mask)
            if force or not (cell_ckpt / "start.pt").is_file():  # derived from mask.pt's inputs: a rerun writes nothing
                save_torch(checkpoint(start, arch, 0, source_ckpt.get("config"), mask=mask), cell_ckpt / "start.pt")
            config = setup.config(arch=arch, shortcut=shortcut, axis=args.axis, temperature=temperature,
                                  density=density, source=checkpoint_label(source_path),
                                  source_fingerprint=source_fp)

            # Step 5: retrain k copies with the mask fixed, differing only in data order and
            # augmentation (generator streams copy1, copy2, ...).
            summaries, finals = [], []
            for k in range(1, copies + 1):
                copy_ckpt = cell_ckpt / f"copy_{k}"
                summaries.append(train_run(
                    apply_mask(model_from_checkpoint(source_ckpt, device), mask), setup.train, setup.test, hp,
                    arch=arch, config=dict(config, copy=k), ckpt_dir=copy_ckpt, results_dir=cell_res / f"copy_{k}",
                    seed=seed, force=force,
                    stream=f"copy{k}",
                    save_as=[(0, "start.pt"), (hp.epochs, "final.pt")], mask=mask,
                    callbacks=[SummaryFields(chosen_by_score=chosen)],
                    desc=f"{temp_name} {density_name(density)} copy {k}"))
                finals.append(read_checkpoint(copy_ckpt / "final.pt", hint="python three_regime.py --force"))

            # Step 6: every pair of copies: the linear path (lmc_<i>_<j>.csv), mc, barrier, CKA.
            pairs = list(itertools.combinations(range(1, copies + 1), 2))
            bar = tqdm(total=len(pairs) * args.lmc_points, desc=f"{temp_name} {density_name(density)} paths",
                       unit="point", dynamic_ncols=True)
            measured = [measure_pair(scratch, finals[i - 1], finals[j - 1], setup.train, cell_res, i, j,
                                     points=args.lmc_points, bn_batches=args.bn_batches,
                                     bn_batch_size=args.bn_batch_size,
                                     cka_images=args.cka_images, force=force, progress=lambda: bar.update())
                        for i, j in pairs]
            bar.close()
            rows.append(summary_row(args.axis, temperature, density, dense_acc, summaries, measured))
            rows[-1].update(collapsed_layers=";".join(collapsed_layers(mask)),
                            chosen_by_score="" if chosen is None else chosen)
            r = rows[-1]
            print(f"{temp_name} {density_name(density)}: dense {dense_acc:.2f}% -> pruned {r['pruned_acc']:.2f}% "
                  f"-> retrained {r['retrained_acc']:.2f}%, mc {r['mc']:+.4f} ({r['mc_from']}), "
                  f"barrier {r['barrier']:.4f}, cka {r['cka']:.4f}")

    # Step 7: the regimes from mc and cka, and under a grid of thresholds around them; then
    # summary.csv and regimes.json.
    regimes = assign_regimes(rows, args.mc_threshold, args.cka_threshold)
    save_csv(rows, res_root / "summary.csv", SUMMARY_COLUMNS)
    save_json(regimes, res_root / "regimes.json")
    print(f"regimes (mc threshold {args.mc_threshold:g}, cka threshold {args.cka_threshold:g}; * = changes "
          "within the sensitivity grid): "
          + ", ".join(f"{r['temperature']}/{r['density']:g}={r['regime']}{'' if r['robust'] == 'yes' else '*'}"
                      for r in rows))
    print(f"wrote {res_root / 'summary.csv'} and {res_root / 'regimes.json'}")


if __name__ == "__main__":
    main()
