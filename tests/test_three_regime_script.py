"""three_regime.py end to end on the tiny dense run: a 2 x 2 grid, 2 copies, 1 retraining epoch.
Every pinned output is checked against what it must recompute from (masks, checkpoints,
trajectories, lmc_*.csv, regimes.json); a rerun retrains and re-measures nothing; bad input is
one line and exit 2."""
import shutil

import pytest
import torch

from conftest import TINY_DATA, assert_user_error, run_script
from utils.io import load_csv, load_json
from utils.three_regime import LMC_COLUMNS, SUMMARY_COLUMNS, classify, loss_barrier, mc_point, mc_source

GRID = ["--temperatures", 1, 3, "--densities", 0.1, 0.5, "--copies", 2]
SMALL = ["--train-subset", 128, "--test-subset", 256, "--epochs", 1, "--milestones",
         "--lmc-points", 5, "--cka-images", 100]


@pytest.fixture(scope="module")
def grid_run(tiny_dense, tmp_path_factory):
    root = tmp_path_factory.mktemp("three_regime")
    ck, res = root / "checkpoints", root / "results"
    args = [*TINY_DATA, *GRID, *SMALL, "--dense-run", tiny_dense["run"], "--checkpoint-dir", ck,
            "--results-dir", res]
    first = run_script("three_regime.py", *args)
    return {"ck": ck / "three_regime" / "epochs", "res": res / "three_regime" / "epochs", "args": args,
            "first": first, "dense": tiny_dense}


def cells():
    for t in ("epoch_001", "epoch_003"):
        for d, density in (("density_10", 0.1), ("density_50", 0.5)):
            yield t, d, density


def test_summary_and_regimes(grid_run):
    res, ck = grid_run["res"], grid_run["ck"]
    rows = load_csv(res / "summary.csv")
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert [(r["temperature"], r["density"]) for r in rows] == [("1", "0.1"), ("1", "0.5"), ("3", "0.1"), ("3", "0.5")]
    regimes = load_json(res / "regimes.json")
    mc_t, cka_t = regimes["mc_threshold"], regimes["cka_threshold"]
    assert (mc_t, cka_t) == (0.1, 0.98)  # fixed defaults, no statistic of the data
    assert regimes["sensitivity"]["mc_thresholds"] == [0.05, 0.1, 0.2]
    assert regimes["sensitivity"]["cka_thresholds"] == [0.97, 0.98, 0.99]
    assert len(regimes["cells"]) == 4
    dense_traj = load_csv(grid_run["dense"]["results"] / "dense" / "trajectory.csv")
    for r, cell, (t, d, density) in zip(rows, regimes["cells"], cells()):
        assert r["axis"] == "epochs" and r["pairs"] == "1"
        assert r["regime"] == classify(float(r["mc"]), float(r["cka"]), mc_t, cka_t, r["mc_from"])
        on_grid = {classify(float(r["mc"]), float(r["cka"]), m, c, r["mc_from"])
                   for m in (0.05, 0.1, 0.2) for c in (0.97, 0.98, 0.99)}
        assert r["robust"] == ("yes" if on_grid == {r["regime"]} and r["regime"] != "undecided" else "no")
        assert (cell["regime"], cell["mc_from"], cell["robust"]) == (r["regime"], r["mc_from"], r["robust"] == "yes")
        assert set(cell["regimes_on_grid"].values()) == on_grid
        # dense_acc: the temperature checkpoint's test accuracy (same images as the dense run's)
        assert float(r["dense_acc"]) == pytest.approx(float(dense_traj[int(r["temperature"])]["test_acc"]), abs=1e-3)
        # pruned_acc: row 0 of the copies; retrained_acc: the mean of their final rows
        trajs = [load_csv(res / t / d / f"copy_{k}" / "trajectory.csv") for k in (1, 2)]
        assert [len(tr) for tr in trajs] == [2, 2]
        assert float(r["pruned_acc"]) == pytest.approx(float(trajs[0][0]["test_acc"]), abs=1e-3)
        assert trajs[0][0]["test_acc"] == trajs[1][0]["test_acc"] and float(r["pruned_acc_std"]) == 0
        finals = [float(tr[-1]["test_acc"]) for tr in trajs]
        assert float(r["retrained_acc"]) == pytest.approx(sum(finals) / 2, abs=1e-3)
        assert float(r["retrained_acc_std"]) == pytest.approx(abs(finals[0] - finals[1]) / 2, abs=1e-3)
        # mc and barrier recompute from the pair's path, endpoints included: the error from its
        # exact counts, the loss as written at full precision
        path = load_csv(res / t / d / "lmc_1_2.csv")
        assert list(path[0]) == LMC_COLUMNS
        assert [float(p["alpha"]) for p in path] == [0, 0.25, 0.5, 0.75, 1]
        n = int(path[0]["train_images"])
        assert n == 128 and all(int(p["train_images"]) == n for p in path)
        errors = [int(p["train_wrong"]) / n for p in path]
        assert all(0 <= e <= 1 for e in errors)  # a fraction, not a percentage
        assert [float(p["train_error"]) for p in path] == pytest.approx(errors, abs=5e-7)  # 6 digits
        mc, star = mc_point(errors, n)
        pair = load_json(res / t / d / "pairs.json")["1_2"]
        assert pair["mc"] == mc and pair["mc_from"] == mc_source(star, 5) == r["mc_from"]
        assert float(r["mc"]) == pytest.approx(mc, rel=5e-6, abs=1e-12)  # summary.csv: 6 digits
        assert pair["barrier"] == pytest.approx(
            loss_barrier([float(p["alpha"]) for p in path], [float(p["train_loss"]) for p in path]), abs=1e-12)
        assert float(r["barrier"]) == pytest.approx(pair["barrier"], rel=5e-6, abs=1e-12)
        assert 0 <= float(r["cka"]) <= 1 and float(r["mc_std"]) == 0  # one pair: no spread
        assert (ck / t / d / "mask.pt").is_file() and (ck / t / d / "start.pt").is_file()


def test_masks_start_and_final_weights(grid_run):
    ck = grid_run["ck"]
    for t, d, density in cells():
        mask = torch.load(ck / t / d / "mask.pt", weights_only=True)
        assert "linear.weight" not in mask and len(mask) == 21  # every conv, the Linear layer dense
        for n, m in mask.items():
            assert int((m == 0).sum()) == int(round((1 - density) * m.numel())), n
        starts = [torch.load(ck / t / d / f"copy_{k}" / "start.pt", weights_only=True)["model"] for k in (1, 2)]
        cell_start = torch.load(ck / t / d / "start.pt", weights_only=True)["model"]
        for name in starts[0]:  # bitwise equal starts
            assert torch.equal(starts[0][name], starts[1][name]) and torch.equal(starts[0][name], cell_start[name])
        # the start is the temperature checkpoint with the mask applied
        source = torch.load(grid_run["dense"]["run"] / f"{t}.pt", weights_only=True)["model"]
        for n, m in mask.items():
            assert torch.equal(cell_start[n], source[n] * m)
        assert torch.equal(cell_start["linear.weight"], source["linear.weight"])
        finals = [torch.load(ck / t / d / f"copy_{k}" / "final.pt", weights_only=True)["model"] for k in (1, 2)]
        for f in finals:
            for n, m in mask.items():
                assert torch.all(f[n][m == 0] == 0), n  # pruned weights stay exactly zero
        # different data order and crops: the copies end with different weights
        assert not torch.equal(finals[0]["layer1.0.conv1.weight"], finals[1]["layer1.0.conv1.weight"])


def test_rerun_skips_training_and_measuring(grid_run):
    res, ck = grid_run["res"], grid_run["ck"]
    stamps = {p: p.stat().st_mtime_ns for p in [*ck.rglob("final.pt"), *res.rglob("lmc_*.csv"),
                                                  *res.rglob("trajectory.csv")]}
    before = (res / "summary.csv").read_text()
    second = run_script("three_regime.py", *grid_run["args"])
    assert second.stderr.count("finished already") == 8  # 4 cells x 2 copies
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (res / "summary.csv").read_text() == before


def test_bad_input_is_one_line(tiny_dense, tmp_path):
    base = [*TINY_DATA, "--dense-run", tiny_dense["run"], "--checkpoint-dir", tmp_path / "ck",
            "--results-dir", tmp_path / "res"]
    for densities in (["0"], ["1.5"]):
        assert_user_error(run_script("three_regime.py", *base, "--densities", *densities, check=False),
                          "--densities")
    assert_user_error(run_script("three_regime.py", *base, "--copies", 1, check=False), "--copies")
    assert_user_error(run_script("three_regime.py", *base, "--lmc-points", 2, check=False), "--lmc-points")
    # a temperature the dense run did not save: the message names the train_dense.py command
    run = tmp_path / "dense"
    shutil.copytree(tiny_dense["run"], run)
    (run / "epoch_002.pt").unlink()
    proc = run_script("three_regime.py", *TINY_DATA, "--dense-run", run, "--temperatures", 2,
                      "--checkpoint-dir", tmp_path / "ck", "--results-dir", tmp_path / "res", check=False)
    assert_user_error(proc, "epoch(s) [2]", "python train_dense.py", "--save-epochs 2 3")
    proc = run_script("three_regime.py", *base, "--temperatures", 10, check=False)
    assert_user_error(proc, "beyond", "--save-epochs 10")
    assert not (tmp_path / "res").exists()  # nothing written before the checks


def test_batch_size_axis_trains_its_dense_net_from_init(tiny_dense, tmp_path):
    ck, res = tmp_path / "ck", tmp_path / "res"
    run_script("three_regime.py", *TINY_DATA, "--axis", "batch-size", "--temperatures", 64, "--densities", 0.5,
               "--copies", 2, "--train-subset", 128, "--test-subset", 256, "--epochs", 1, "--milestones",
               "--lmc-points", 3, "--cka-images", 50, "--dense-run", tiny_dense["run"],
               "--checkpoint-dir", ck, "--results-dir", res)
    root = res / "three_regime" / "batch-size"
    dense = load_json(root / "batch_064" / "summary.json")
    # the tiny dense run has 3 epochs at batch 128: batch 64 takes round(3 * 64 / 128) = 2 epochs
    # (1.5 rounded half up), lr 0.1, x0.1 at 50% and 75% of them
    cfg = dense["config"]
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["milestones"]) == (2, 64, 0.1, [1, 2])
    traj = load_csv(root / "batch_064" / "trajectory.csv")
    dense_traj = load_csv(tiny_dense["results"] / "dense" / "trajectory.csv")
    assert len(traj) == 3 and traj[0]["test_acc"] == dense_traj[0]["test_acc"]  # starts from init.pt
    assert (ck / "three_regime" / "batch-size" / "batch_064" / "dense.pt").is_file()
    rows = load_csv(root / "summary.csv")
    assert len(rows) == 1 and rows[0]["axis"] == "batch-size" and rows[0]["temperature"] == "64"
    assert float(rows[0]["dense_acc"]) == pytest.approx(dense["test_acc"], abs=1e-3)
    assert len(load_csv(root / "batch_064" / "density_50" / "lmc_1_2.csv")) == 3
