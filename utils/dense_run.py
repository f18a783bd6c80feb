"""The dense run's weights after any epoch t: its saved checkpoint, else a checked replay.

`train_dense.py` keeps only a few epochs (`--save-epochs`). A task that needs the weights of an
epoch it did not keep (Early-Bird's `--ticket-epochs auto`, EarlyCroP's detected epoch) replays
the dense run's first t epochs from its `init.pt` with the dense run's own recipe, seed,
precision, BN-L1 penalty and training/test subsets (read from the config saved in `init.pt`;
only the data folder and the device come from the caller), through the same `train_run`. The
same seed gives the same data order and crops, so on the device the dense run used, the replay
is the dense run. That is checked: the replay's test accuracy and `weight_distance`
(‖θ_t − θ₀‖²) at every epoch 1…t must equal the dense run's `trajectory.csv` rows (to the 6
significant digits the CSV keeps); a mismatch (another device, another precision, a changed
data slice) is a UserError, never silently different weights.

The replay also records `distance_from_epoch1` and `norm_epoch1` (‖θ_t − θ_1‖₂, ‖θ_1‖₂ over
every parameter, what EarlyCroP's authors' detector reads): `dense_distances_from_epoch1` gives
them for a dense run made before train_dense.py wrote them, from a checked replay.

The replayed checkpoint is kept as `<replay_dir>/epoch_EEE.pt` (a normal checkpoint plus
`replay_of`: the SHA-256 of `init.pt`'s weights), so it is computed once; the replay run's own
trajectory and summary go to `<replay_results>/epoch_EEE/`, and an interrupted replay resumes
from `<replay_dir>/epoch_EEE.run/resume.pt`. Callers choose the folders beside their own
outputs (EarlyCroP: `checkpoints/earlycrop/replay/`; Early-Bird: `checkpoints/<its run
name>/replay/`), never inside the dense run's folder, which other scripts read concurrently.
"""
import json
import math
import shutil
import sys
from pathlib import Path

from data import load_cifar10
from models import model_from_checkpoint, prunable_weights, read_checkpoint
from utils.config import TrainConfig
from utils.errors import UserError
from utils.io import load_csv
from utils.pruning import weights_fingerprint
from utils.train import DistanceFromEpoch1, train_run

CHECKED_COLUMNS = ("test_acc", "weight_distance")
DISTANCE_COLUMNS = ("distance_from_epoch1", "norm_epoch1")


def dense_checkpoint_path(dense_run, epoch):
    return Path(dense_run) / ("init.pt" if epoch == 0 else f"epoch_{epoch:03d}.pt")


def dense_trajectory(dense_results, hint="python train_dense.py"):
    """The dense run's trajectory rows (dicts of strings); UserError when missing."""
    path = Path(dense_results) / "trajectory.csv"
    if not path.is_file():
        raise UserError(f"{path} not found (the dense run's trajectory); make it with: {hint}")
    rows = load_csv(path)
    if not rows or "weight_distance" not in rows[0]:
        raise UserError(f"{path} has no weight_distance column (train_dense.py writes it); "
                        f"make it again with: {hint} --force")
    return rows


def _matches(a, b):
    """Equal to the 6 significant digits trajectory.csv keeps (its own rounding included)."""
    return math.isclose(a, b, rel_tol=2e-5, abs_tol=1e-9)


def dense_weights_at(dense_run, epoch, *, dense_results, replay_dir, replay_results, data_dir,
                     device="cpu", download=False, hint="python train_dense.py"):
    """(checkpoint dict, path) of the dense run `dense_run` after epoch `epoch`.

    The saved `epoch_EEE.pt` (or `init.pt` for 0) when the dense run kept it; else an earlier
    replay in `replay_dir` of this very init; else a fresh replay, checked against the dense
    run's trajectory in `dense_results`. `data_dir` and `download` say where the CIFAR-10 files
    are; which images are used comes from the dense run's config.
    """
    dense_run, replay_dir, replay_results = Path(dense_run), Path(replay_dir), Path(replay_results)
    saved = dense_checkpoint_path(dense_run, epoch)
    if saved.is_file():
        return read_checkpoint(saved, "cpu", hint), saved

    init = read_checkpoint(dense_checkpoint_path(dense_run, 0), "cpu", hint)
    fingerprint = weights_fingerprint(init["model"])
    kept = Path(replay_dir) / f"epoch_{epoch:03d}.pt"
    if kept.is_file():
        ckpt = read_checkpoint(kept, "cpu", f"delete {kept}; it is replayed again")
        if ckpt.get("replay_of") == fingerprint and ckpt.get("epoch") == epoch:
            return ckpt, kept
        print(f"note: {kept} was replayed from another dense run; replaying again", file=sys.stderr)
    _replay(dense_run, init, epoch, dense_results=dense_results, replay_dir=replay_dir,
            replay_results=replay_results, data_dir=data_dir, device=device, download=download, hint=hint)
    return read_checkpoint(kept, "cpu", hint), kept


def dense_distances_from_epoch1(dense_run, upto, *, dense_results, replay_dir, replay_results, data_dir,
                                device="cpu", download=False, hint="python train_dense.py"):
    """[(distance_from_epoch1, norm_epoch1)] for epochs 0..upto of the dense run (None, None at 0):
    ‖θ_t − θ_1‖₂ and ‖θ_1‖₂ over every parameter, what EarlyCroP's authors' detector reads.

    From the dense run's trajectory.csv when it has the columns (train_dense.py writes them);
    for a dense run made before them, from an exact replay of its first `upto` epochs (checked
    against its trajectory row by row, as `dense_weights_at` checks), kept in `replay_results`.
    """
    rows = dense_trajectory(dense_results, hint)
    rows = sorted(rows, key=lambda r: int(float(r["epoch"])))[:upto + 1]
    if not _has_distances(rows, upto):
        init = read_checkpoint(dense_checkpoint_path(dense_run, 0), "cpu", hint)
        replayed = Path(replay_results) / f"epoch_{upto:03d}" / "trajectory.csv"
        kept = Path(replay_dir) / f"epoch_{upto:03d}.pt"
        fresh = kept.is_file() and read_checkpoint(kept, "cpu", hint).get("replay_of") == weights_fingerprint(
            init["model"])
        if not (fresh and replayed.is_file() and _has_distances(load_csv(replayed), upto)):
            _replay(dense_run, init, upto, dense_results=dense_results, replay_dir=replay_dir,
                    replay_results=replay_results, data_dir=data_dir, device=device, download=download,
                    hint=hint)
        rows = sorted(load_csv(replayed), key=lambda r: int(float(r["epoch"])))[:upto + 1]
    return [(None, None) if int(float(r["epoch"])) == 0 else
            (float(r["distance_from_epoch1"]), float(r["norm_epoch1"])) for r in rows]


def _has_distances(rows, upto):
    return len(rows) > upto and all(r.get(c) not in (None, "") for r in rows[1:upto + 1] for c in DISTANCE_COLUMNS)


def _replay(dense_run, init, epoch, *, dense_results, replay_dir, replay_results, data_dir, device,
            download, hint):
    """Replay the dense run's first `epoch` epochs into `replay_dir`/epoch_EEE.pt, checked
    against every row of its trajectory up to `epoch`; a mismatch is a UserError."""
    dense_run, replay_dir, replay_results = Path(dense_run), Path(replay_dir), Path(replay_results)
    config = dict(init.get("config") or {})
    final_epoch = int(config.get("epochs", 0))
    if not 0 < epoch <= final_epoch:
        raise UserError(f"epoch {epoch} lies beyond the dense run {dense_run} ({final_epoch} epochs); "
                        f"pass an epoch from 0 to {final_epoch}")
    fingerprint = weights_fingerprint(init["model"])
    name = f"epoch_{epoch:03d}"
    kept = replay_dir / f"{name}.pt"

    # The trajectory rows to check against, before any training.
    rows = {int(float(r["epoch"])): r for r in dense_trajectory(dense_results, hint)}
    if any(t not in rows or any(rows[t].get(c) in (None, "") for c in CHECKED_COLUMNS) for t in range(1, epoch + 1)):
        raise UserError(f"{Path(dense_results) / 'trajectory.csv'} has no complete rows up to epoch {epoch}; "
                        f"finish the dense run: {hint}")

    # The dense run's own recipe, data and seed; only the length is cut to `epoch`.
    hp = TrainConfig(**{k: (tuple(config[k]) if isinstance(config.get(k), list) else config[k])
                        for k in TrainConfig.__dataclass_fields__ if k in config})
    hp.epochs = epoch
    seed = int(config.get("seed", 0))
    train, test = load_cifar10(data_dir, download, int(config.get("train_subset") or 0),
                               int(config.get("test_subset") or 0), device)
    model = model_from_checkpoint(init, device)
    init_weights = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    extra = {}
    if config.get("adv_train"):  # a PGD-trained dense run replays with the same attack
        from utils.attacks import adversarial_train_kwargs
        extra = adversarial_train_kwargs(test, seed, config["adv_eps"], config["adv_step"],
                                         config["adv_steps"], config["adv_monitor_subset"],
                                         precision=config.get("precision", "auto"))
    run_config = dict(config, epochs=epoch, replay_of=fingerprint)
    run_dir, results = replay_dir / f"{name}.run", replay_results / name
    (results / "summary.json").unlink(missing_ok=True)  # its checkpoint is gone: train it again
    print(f"dense run {dense_run}: replaying its first {epoch} epochs from init.pt into {kept}",
          file=sys.stderr)
    train_run(model, train, test, hp, arch=init["arch"], config=run_config, ckpt_dir=run_dir,
              results_dir=results, seed=seed, save_as=[(epoch, "weights.pt")],
              bn_l1=float(config.get("bn_l1", 0.0)), weight_distance_ref=init_weights,
              checkpoint_extra={"replay_of": fingerprint}, desc=f"replay dense to epoch {epoch}",
              callbacks=[DistanceFromEpoch1()], **extra)

    # The check: the replay is the dense run only if it reproduces the dense run's numbers.
    mine = {int(float(r["epoch"])): r for r in load_csv(results / "trajectory.csv")}
    wrong = [(t, c) for t in range(1, epoch + 1) for c in CHECKED_COLUMNS
             if not _matches(float(mine[t][c]), float(rows[t][c]))]
    if wrong:
        shutil.rmtree(run_dir, ignore_errors=True)
        (results / "summary.json").unlink(missing_ok=True)
        t = wrong[0][0]
        what = ", ".join(f"{c} {mine[t][c]} vs {rows[t][c]}" for tt, c in wrong if tt == t)
        raise UserError(f"replaying dense run {dense_run} to epoch {epoch} gave other numbers than its "
                        f"trajectory at epoch {t} ({what}); replay on the device and data it was trained with "
                        f"(it ran on {_dense_device(dense_results)}), or retrain it saving that epoch: "
                        f"{hint} --save-epochs {epoch} {final_epoch} --force")
    (run_dir / "weights.pt").replace(kept)
    shutil.rmtree(run_dir, ignore_errors=True)


def _dense_device(dense_results):
    path = Path(dense_results) / "summary.json"
    try:
        return json.loads(path.read_text()).get("device", "an unknown device")
    except (OSError, ValueError):
        return "an unknown device"
