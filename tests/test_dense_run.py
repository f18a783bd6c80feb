"""utils/dense_run.dense_weights_at: a replay of the dense run equals its saved checkpoint."""
import shutil

import pytest
import torch

from conftest import DATA_DIR, TINY_DATA, run_script
from models import read_checkpoint
from utils.dense_run import dense_weights_at
from utils.errors import UserError
from utils.io import load_csv, save_csv


def copy_dense(tiny_dense, root, drop_epochs):
    """The tiny dense run (checkpoints and results) copied under `root`, minus some epochs."""
    run, results = root / "checkpoints" / "dense", root / "results" / "dense"
    shutil.copytree(tiny_dense["run"], run)
    shutil.copytree(tiny_dense["results"] / "dense", results)
    for e in drop_epochs:
        (run / f"epoch_{e:03d}.pt").unlink()
    return run, results


def weights_at(run, results, epoch, root):
    return dense_weights_at(run, epoch, dense_results=results, replay_dir=root / "replay",
                            replay_results=root / "replay_results", data_dir=DATA_DIR, device="cpu")


def test_replay_equals_the_saved_checkpoint_bit_for_bit(tiny_dense, tmp_path, capsys):
    run, results = copy_dense(tiny_dense, tmp_path, [2])
    # a saved epoch is returned as it is, no replay
    ckpt, path = weights_at(run, results, 3, tmp_path)
    assert path == run / "epoch_003.pt" and not (tmp_path / "replay").exists()
    ckpt, path = weights_at(run, results, 2, tmp_path)
    assert "replaying its first 2 epochs" in capsys.readouterr().err
    assert path == tmp_path / "replay" / "epoch_002.pt" and path.is_file()
    saved = read_checkpoint(tiny_dense["run"] / "epoch_002.pt")
    assert ckpt["epoch"] == 2 and ckpt["arch"] == saved["arch"]
    assert ckpt["model"].keys() == saved["model"].keys()
    for name, tensor in saved["model"].items():
        assert torch.equal(ckpt["model"][name], tensor), name
    assert not (tmp_path / "replay" / "epoch_002.run").exists()  # resume folder cleaned up
    # asked again: the kept replay, no training
    stamp = path.stat().st_mtime_ns
    again, path2 = weights_at(run, results, 2, tmp_path)
    assert path2 == path and path.stat().st_mtime_ns == stamp
    assert "replaying" not in capsys.readouterr().err
    assert all(torch.equal(again["model"][n], t) for n, t in ckpt["model"].items())


def test_a_replay_that_differs_from_the_trajectory_is_refused(tiny_dense, tmp_path):
    run, results = copy_dense(tiny_dense, tmp_path, [1])
    rows = load_csv(results / "trajectory.csv")
    rows[1]["weight_distance"] = str(float(rows[1]["weight_distance"]) * 1.01)
    save_csv(rows, results / "trajectory.csv", list(rows[0]))
    with pytest.raises(UserError, match="weight_distance .* vs .*--save-epochs 1 3 --force"):
        weights_at(run, results, 1, tmp_path)
    assert not (tmp_path / "replay" / "epoch_001.pt").exists()
    with pytest.raises(UserError, match="beyond the dense run"):
        weights_at(run, results, 4, tmp_path)


def test_early_bird_auto_replays_an_unsaved_ticket_epoch(tiny_dense, tmp_path):
    # the dense run kept only its last epoch; the detector (window 2, eps 1) picks epoch 1
    run, _ = copy_dense(tiny_dense, tmp_path, [1, 2])
    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    proc = run_script("early_bird.py", *TINY_DATA, "--train-subset", 128, "--test-subset", 64, "--epochs", 1,
                      "--speed-batch", 8, "--speed-repeats", 1, "--dense-run", run, "--ticket-epochs", "auto",
                      "--ratios", 0.5, "--eb-window", 2, "--eb-eps", 1,
                      "--checkpoint-dir", ck, "--results-dir", res)
    assert "replaying its first 1 epochs" in proc.stderr
    replay = read_checkpoint(ck / "early_bird" / "replay" / "epoch_001.pt")
    saved = read_checkpoint(tiny_dense["run"] / "epoch_001.pt")
    assert all(torch.equal(replay["model"][n], t) for n, t in saved["model"].items())
    rows = load_csv(res / "early_bird" / "summary.csv")
    assert [(r["ticket_epoch"], r["ratio"]) for r in rows] == [("1", "0.5")]
    # the ticket was drawn from the replayed weights: its pruned accuracy is theirs
    compact = read_checkpoint(ck / "early_bird" / "epoch_001" / "ratio_50" / "compact.pt")
    first = "layer1.0.bn1.weight"
    keep = compact["channels"]["layer1.0"]
    assert torch.equal(compact["model"][first], saved["model"][first][keep])
