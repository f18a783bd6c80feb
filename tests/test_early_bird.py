"""Early-Bird detection (utils/early_bird.py) and early_bird.py end to end on the real slice."""
import json
import shutil
import types

import numpy as np
import pytest
import torch

import early_bird
from conftest import TINY_DATA, assert_user_error, masked_model, run_script
from data import load_cifar10
from models import count_params, load_checkpoint
from utils.channels import count_flops, select_channels, block_gammas
from utils.early_bird import detect, write_detection
from utils.io import load_csv
from utils.train import evaluate

BNS = [f"layer{s}.{i}.bn1" for s in (1, 2, 3) for i in range(3)]


# --- detection on a synthetic γ history with a known answer ---------------------------------

def synthetic_history():
    """Two prunable BNs of 4 channels (8 in all), ratio 0.5 keeps 4; kept sets per epoch:
    e0 all γ equal -> ties -> {4,5,6,7}; e1-e3 {0,1,2,4}; e4-e9 {0,1,2,5}."""
    kept = [{4, 5, 6, 7}] + [{0, 1, 2, 4}] * 3 + [{0, 1, 2, 5}] * 6
    rows = []
    for e, ks in enumerate(kept):
        if e == 0:
            rows.append([1.0] * 8)
        else:  # kept: |γ| in 1..2 (one of them negative), removed: small; all distinct
            rows.append([(-1 if j == 0 else 1) * (1 + 0.1 * j + 0.01 * e) if j in ks else 0.01 * (j + 1)
                         for j in range(8)])
    g = torch.tensor(rows)
    noise = torch.rand(10, 16, generator=torch.Generator().manual_seed(0))
    # dict order deliberately not network order, plus BatchNorms the detector must ignore
    return {"bn1": noise, "layer1.1.bn1": g[:, 4:], "layer1.0.bn2": noise, "layer1.0.bn1": g[:, :4]}


@pytest.mark.parametrize("eps,window,eb_epoch,max_distance", [
    (0.1, 3, 3, [None, None, 0.75, 0, 0.25, 0.25, 0, 0, 0, 0]),
    (0.1, 4, 7, [None, None, None, 0.75, 0.25, 0.25, 0.25, 0, 0, 0]),
    (0.3, 5, 5, [None, None, None, None, 0.75, 0.25, 0.25, 0.25, 0, 0]),
    (0.1, 11, None, [None] * 10),
])
def test_detection_on_a_known_history(eps, window, eb_epoch, max_distance):
    result, matrices = detect(synthetic_history(), [0.5], eps, window)
    assert result["prunable_bns"] == ["layer1.0.bn1", "layer1.1.bn1"]
    assert (result["eps"], result["window"]) == (eps, window)
    assert result["ratios"]["0.5"] == {"eb_epoch": eb_epoch, "max_distance": max_distance}
    d = matrices[0.5]
    assert d[1, 0] == d[0, 1] == 0.75 and d[4, 3] == 0.25 and d[9, 1] == 0.25 and d[9, 5] == 0
    assert torch.all(d.diagonal() == 0)


def test_detection_files(tmp_path):
    result, matrices = detect(synthetic_history(), [0.0, 0.5], 0.1, 5)
    assert result["ratios"]["0"]["eb_epoch"] == 4  # nothing pruned: every mask equal
    write_detection(result, matrices, tmp_path)
    assert json.loads((tmp_path / "detection.json").read_text()) == result
    rows = load_csv(tmp_path / "mask_distance_ratio_50.csv")
    assert list(rows[0]) == ["epoch"] + [str(e) for e in range(10)]
    assert float(rows[1]["0"]) == 0.75 and float(rows[4]["3"]) == 0.25 and float(rows[7]["6"]) == 0


# --- early_bird.py end to end on tiny_dense -------------------------------------------------

SMALL = ["--train-subset", 256, "--test-subset", 128, "--epochs", 1, "--speed-batch", 8,
         "--speed-repeats", 2]


@pytest.fixture(scope="module")
def eb(tiny_dense, tmp_path_factory):
    root = tmp_path_factory.mktemp("early_bird")
    ck, res = root / "checkpoints", root / "results"
    proc = run_script("early_bird.py", *TINY_DATA, *SMALL, "--dense-run", tiny_dense["run"],
                      "--ticket-epochs", 1, 2, "--eb-window", 3,
                      "--checkpoint-dir", ck, "--results-dir", res)
    return {"ck": ck / "early_bird", "res": res / "early_bird", "proc": proc, "dense": tiny_dense}


@pytest.fixture(scope="module")
def test_split(data_dir):
    return load_cifar10(data_dir, download=False, train_subset=1, test_subset=128)[1]


def independent_keep(gamma_list, ratio):
    """Kept channels by a plain sort of |γ| (γ of a trained net are distinct)."""
    values = np.abs(np.concatenate([g.numpy() for g in gamma_list]))
    n_remove = int(round(ratio * len(values)))
    cut = np.sort(values)[n_remove - 1] if n_remove else -1
    return values > cut


def test_summary_rows(eb, test_split):
    rows = load_csv(eb["res"] / "summary.csv")
    assert list(rows[0])[:7] == ["ticket_epoch", "ratio", "dense_acc", "pruned_acc", "retrained_acc",
                                 "params", "flops"]
    assert [(r["ticket_epoch"], r["ratio"]) for r in rows] == [("1", "0.3"), ("1", "0.5"), ("2", "0.3"), ("2", "0.5")]
    dense, _ = load_checkpoint(eb["dense"]["run"] / "epoch_003.pt")
    dense_params, dense_flops = count_params(dense), count_flops(dense)
    dense_acc = evaluate(dense, test_split)[1]
    for r in rows:
        e, ratio = int(r["ticket_epoch"]), float(r["ratio"])
        assert float(r["dense_acc"]) == pytest.approx(dense_acc, abs=1e-3)
        assert int(r["params"]) < dense_params == int(r["dense_params"])
        assert int(r["flops"]) < dense_flops == int(r["dense_flops"])
        compact, ckpt = load_checkpoint(eb["ck"] / f"epoch_{e:03d}" / f"ratio_{100 * ratio:g}" / "compact.pt")
        assert int(r["params"]) == count_params(compact) and int(r["flops"]) == count_flops(compact)
        assert int(r["channels_kept"]) == 336 - round(ratio * 336) == sum(ckpt["widths"])
        traj = load_csv(eb["res"] / f"epoch_{e:03d}" / f"ratio_{100 * ratio:g}" / "trajectory.csv")
        assert [t["epoch"] for t in traj] == ["0", "1"]
        assert float(r["pruned_acc"]) == pytest.approx(float(traj[0]["test_acc"]), abs=1e-3)
        assert float(r["pruned_acc"]) == pytest.approx(evaluate(compact, test_split)[1], abs=1e-3)
        assert float(r["retrained_acc"]) == pytest.approx(float(traj[1]["test_acc"]), abs=1e-3)
        # dense for e epochs on 512 images + 1 retraining epoch on 256, 3 forward passes per image
        train = 3 * (e * 512 * dense_flops + 1 * 256 * int(r["flops"]))
        assert int(r["train_flops"]) == train and int(r["dense_train_flops"]) == 3 * 3 * 512 * dense_flops
        assert float(r["speedup"]) > 0 and r["speed_device"] == "cpu"


@pytest.mark.parametrize("epoch,ratio", [(1, 0.3), (2, 0.5)])
def test_compact_ticket_is_the_globally_thresholded_dense_net(eb, epoch, ratio, test_split):
    dense, _ = load_checkpoint(eb["dense"]["run"] / f"epoch_{epoch:03d}.pt")
    compact, ckpt = load_checkpoint(eb["ck"] / f"epoch_{epoch:03d}" / f"ratio_{100 * ratio:g}" / "compact.pt")
    gammas = block_gammas(dense)
    keep = independent_keep(gammas, ratio)
    assert int(keep.sum()) == 336 - round(ratio * 336)
    sizes = [len(g) for g in gammas]
    expected = np.split(keep, np.cumsum(sizes)[:-1])
    assert ckpt["widths"] == [int(k.sum()) for k in expected]
    for name, k, b in zip(BNS, expected, compact.blocks()):
        assert ckpt["channels"][name[:-4]].tolist() == np.nonzero(k)[0].tolist()
    # the compact net's logits are the masked dense net's, on real images
    x = next(test_split.batches(64))[0].contiguous()
    with torch.no_grad():
        want = masked_model(dense, [torch.from_numpy(k) for k in expected])(x)
        torch.testing.assert_close(compact.eval()(x), want, rtol=1e-4, atol=1e-4)
    assert ckpt["epoch"] == 0 and ckpt["config"]["ticket_epoch"] == epoch


def recompute_detection(history, ratio, eps, window):
    """The contract's rule, written out plainly with numpy."""
    g = np.abs(np.concatenate([history[n].numpy().astype(np.float64) for n in BNS], axis=1))
    n_remove = int(round(ratio * g.shape[1]))
    masks = []
    for row in g:
        keep = np.ones(len(row), bool)
        keep[np.argsort(row, kind="stable")[:n_remove]] = False
        masks.append(keep)
    md = [None if e < window - 1 else max(np.mean(masks[e] != masks[p]) for p in range(e - window + 1, e))
          for e in range(len(masks))]
    eb_epoch = next((e for e, v in enumerate(md) if v is not None and v < eps), None)
    return md, eb_epoch, masks


def test_detection_json_is_reproducible_from_bn_history(eb, tmp_path):
    det = json.loads((eb["res"] / "detection.json").read_text())
    assert {"eps", "window", "prunable_bns", "ratios"} <= set(det)
    assert (det["eps"], det["window"], det["prunable_bns"]) == (0.1, 3, BNS)
    assert (det["pool"], det["pool_bns"], det["pool_channels"]) == ("inner", BNS, 336)
    assert set(det["ratios"]) == {"0.3", "0.5"}
    history = torch.load(eb["dense"]["run"] / "bn_history.pt", weights_only=True)
    for key, ratio in (("0.3", 0.3), ("0.5", 0.5)):
        md, eb_epoch, masks = recompute_detection(history, ratio, 0.1, 3)
        got = det["ratios"][key]
        assert got["eb_epoch"] == eb_epoch
        assert got["max_distance"][:2] == [None, None] and len(got["max_distance"]) == 4
        assert got["max_distance"] == pytest.approx(md)
        matrix = load_csv(eb["res"] / f"mask_distance_ratio_{100 * ratio:g}.csv")
        for i, j in ((0, 3), (1, 2), (3, 1)):
            assert float(matrix[i][str(j)]) == pytest.approx(np.mean(masks[i] != masks[j]), abs=1e-5)
    # a second detection writes the same bytes
    early_bird.main([*map(str, TINY_DATA), "--dense-run", str(eb["dense"]["run"]), "--ratios", "0.3", "0.5",
                     "--eb-window", "3", "--detect-only", "--results-dir", str(tmp_path)])
    assert (tmp_path / "early_bird" / "detection.json").read_bytes() == (eb["res"] / "detection.json").read_bytes()


def test_auto_ticket_epoch_and_retraining_from_scratch(tiny_dense, tmp_path):
    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    # window 2 and eps 1: the first epoch whose mask is not entirely new, i.e. epoch 1
    tiny = ["--train-subset", 128, "--test-subset", 64, "--epochs", 1, "--speed-batch", 8, "--speed-repeats", 1]
    run_script("early_bird.py", *TINY_DATA, *tiny, "--dense-run", tiny_dense["run"], "--ticket-epochs",
               "auto", "--ratios", 0.5, "--eb-window", 2, "--eb-eps", 1, "--retrain-from", "scratch",
               "--checkpoint-dir", ck, "--results-dir", res)
    out = res / "early_bird_scratch"
    det = json.loads((out / "detection.json").read_text())
    assert det["ratios"]["0.5"]["eb_epoch"] == 1
    rows = load_csv(out / "summary.csv")
    assert [(r["ticket_epoch"], r["ratio"], r["retrain_from"]) for r in rows] == [("1", "0.5", "scratch")]
    start, ckpt = load_checkpoint(ck / "early_bird_scratch" / "epoch_001" / "ratio_50" / "compact.pt")
    dense, _ = load_checkpoint(tiny_dense["run"] / "epoch_001.pt")
    sel = select_channels(block_gammas(dense), 0.5)
    assert ckpt["widths"] == sel.widths  # same compact architecture as the ticket ...
    b = start.blocks()[0]  # ... but fresh weights: BatchNorm back at γ = 1, conv1 not the ticket's
    assert torch.all(b.bn1.weight == 1)
    assert not torch.allclose(b.conv1.weight, dense.blocks()[0].conv1.weight[sel.keep[0]])
    # pruned_acc is still the ticket's; the trajectory starts from the fresh initialisation
    assert float(rows[0]["start_acc"]) == pytest.approx(
        float(load_csv(out / "epoch_001" / "ratio_50" / "trajectory.csv")[0]["test_acc"]), abs=1e-3)


def every_bn_gamma(dense_run, epochs):
    """|γ| of every BatchNorm2d (model.modules() order), per epoch, from the saved checkpoints."""
    out = []
    for e in range(epochs + 1):
        model, _ = load_checkpoint(dense_run / ("init.pt" if e == 0 else f"epoch_{e:03d}.pt"))
        out.append(np.concatenate([m.weight.detach().double().abs().numpy() for m in model.modules()
                                   if isinstance(m, torch.nn.BatchNorm2d)]))
    return np.stack(out)


def test_detector_pool_all_thresholds_every_batchnorm(tiny_dense, tmp_path):
    # window 2, eps 0.02: the first epoch whose mask over all 784 channels (16 + 9·(c + c) + 32 + 64
    # shortcut ones) is within 2% of the one before
    run_script("early_bird.py", *TINY_DATA, "--dense-run", tiny_dense["run"], "--ratios", 0.3, 0.5,
               "--eb-window", 2, "--eb-eps", 0.02, "--detector-pool", "all", "--detect-only",
               "--results-dir", tmp_path)
    det = json.loads((tmp_path / "early_bird_pool_all" / "detection.json").read_text())
    gammas = every_bn_gamma(tiny_dense["run"], 3)
    assert det["pool"] == "all" and det["pool_channels"] == gammas.shape[1] == 784
    assert det["prunable_bns"] == BNS  # what is pruned stays the inner channels
    for key, ratio in (("0.3", 0.3), ("0.5", 0.5)):
        n_remove = int(round(ratio * 784))
        masks = []
        for row in gammas:
            keep = np.ones(784, bool)
            keep[np.argsort(row, kind="stable")[:n_remove]] = False
            masks.append(keep)
        md = [None] + [float(np.mean(masks[e] != masks[e - 1])) for e in range(1, 4)]
        assert det["ratios"][key]["max_distance"] == pytest.approx(md, abs=1e-6)
        assert det["ratios"][key]["eb_epoch"] == next((e for e, v in enumerate(md) if v is not None and v < 0.02), None)


def test_retrain_schedule_remaining_continues_the_dense_schedule(tiny_dense, tmp_path):
    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    tiny = ["--train-subset", 512, "--test-subset", 64, "--speed-batch", 8, "--speed-repeats", 1]
    run_script("early_bird.py", *TINY_DATA, *tiny, "--dense-run", tiny_dense["run"], "--ticket-epochs", 1,
               "--ratios", 0.5, "--retrain-from", "scratch", "--retrain-schedule", "remaining",
               "--checkpoint-dir", ck, "--results-dir", res)
    out = res / "early_bird_scratch_remaining"
    traj = load_csv(out / "epoch_001" / "ratio_50" / "trajectory.csv")
    dense = {r["epoch"]: r for r in load_csv(tiny_dense["results"] / "dense" / "trajectory.csv")}
    # the dense run: 3 epochs, lr 0.1 then 0.01 after epoch 2; the ticket of epoch 1 trains 2 and 3
    assert [t["epoch"] for t in traj] == ["1", "2", "3"]
    assert [float(t["lr"]) for t in traj[1:]] == [float(dense["2"]["lr"]), float(dense["3"]["lr"])] == [0.1, 0.01]
    row = load_csv(out / "summary.csv")[0]
    assert (row["retrain_schedule"], row["retrain_epochs"], row["retrain_from"]) == ("remaining", "2", "scratch")
    assert float(row["retrained_acc"]) == pytest.approx(float(traj[-1]["test_acc"]), abs=1e-3)
    f = float(row["flops"]) / float(row["dense_flops"])
    assert float(row["train_flops_ratio"]) == pytest.approx((1 + 2 * f) / 3, rel=1e-6)
    _, final = load_checkpoint(ck / "early_bird_scratch_remaining" / "epoch_001" / "ratio_50" / "final.pt")
    assert final["config"]["retrain_schedule"] == "remaining" and final["config"]["epochs"] == 2


def call_main(capsys, *args):
    """Run early_bird.main in-process (fast) and return what a subprocess would show."""
    with pytest.raises(SystemExit) as exit_info:
        early_bird.main([str(a) for a in args])
    return types.SimpleNamespace(returncode=exit_info.value.code, stderr=capsys.readouterr().err)


def test_bad_inputs_exit_2_with_one_line(tiny_dense, tmp_path, capsys):
    run = tiny_dense["run"]
    out = ["--checkpoint-dir", tmp_path / "ck", "--results-dir", tmp_path / "res"]
    proc = run_script("early_bird.py", *TINY_DATA, *out, "--dense-run", tmp_path / "nope", check=False)
    assert_user_error(proc, "python train_dense.py")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--ratios", 1.0), "--ratios")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--ratios", -0.1, 0.3), "--ratios")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--ticket-epochs", "ten"), "--ticket-epochs")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--ticket-epochs", 9), "--ticket-epochs", "3 epochs")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--eb-window", 1), "--eb-window")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--eb-eps", 0), "--eb-eps")
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--ticket-epochs", 3, "--retrain-schedule",
                                "remaining"), "--retrain-schedule remaining", "below 3")
    # no Early-Bird epoch within 4 epochs of history at the default window 5
    assert_user_error(call_main(capsys, *out, "--dense-run", run, "--ticket-epochs", "auto"), "--ticket-epochs")
    broken = tmp_path / "checkpoints" / "dense"
    shutil.copytree(run, broken)
    (broken / "epoch_002.pt").unlink()
    assert_user_error(call_main(capsys, *out, "--dense-run", broken, "--ticket-epochs", 1, 2),
                      "python train_dense.py", "--save-epochs 1 2 3", "--force")
    (broken / "epoch_003.pt").unlink()
    assert_user_error(call_main(capsys, *out, "--dense-run", broken, "--ticket-epochs", 1), "unfinished", "python train_dense.py")
    (broken / "bn_history.pt").unlink()
    assert_user_error(call_main(capsys, *out, "--dense-run", broken), "bn_history.pt", "python train_dense.py")
    assert not (tmp_path / "res" / "early_bird" / "summary.csv").exists()


def test_report_says_which_retraining_ran():
    from utils.analysis.early_bird import _retraining
    assert "a new full schedule from the initial learning rate (the paper's text)" in _retraining(
        [{"retrain_from": "ticket"}])  # a summary.csv made before retrain_schedule: the full schedule
    text = _retraining([{"retrain_from": "scratch", "retrain_schedule": "remaining"}])
    assert "freshly initialised" in text and "epochs e+1 … E at the dense run's learning rates" in text
    assert "(the authors' released code)" in text


def test_rerun_evaluates_no_finished_ticket_and_writes_nothing(eb, monkeypatch, capsys):
    # the same command again, in-process, with every evaluation refused: a finished ticket's
    # accuracies come from its summary.csv row, so nothing is evaluated and no file is rewritten
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in eb["res"].parent.parent.rglob("*") if p.is_file()}

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished ticket was evaluated again")
    monkeypatch.setattr(early_bird, "evaluate", no_evaluation)
    early_bird.main([*map(str, TINY_DATA), *map(str, SMALL), "--dense-run", str(eb["dense"]["run"]),
                     "--ticket-epochs", "1", "2", "--eb-window", "3",
                     "--checkpoint-dir", str(eb["ck"].parent), "--results-dir", str(eb["res"].parent)])
    assert capsys.readouterr().err.count("finished already") == 4
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in eb["res"].parent.parent.rglob("*") if p.is_file()}
    assert after == files
