"""earlycrop.py end to end on the real slice (tiny settings, the tiny_dense run), checked against
independent recomputations, plus its bad-input exits."""
import json
import re
import shutil
import types

import pytest
import torch
import torch.nn.functional as F

import earlycrop
from conftest import REPO, TINY_DATA, assert_user_error, masked_model, run_script
from models import load_checkpoint, model_from_checkpoint, prunable_weights, read_checkpoint
from utils.channels import select_channels
from utils.crop import channel_gate_scores, score_batches_on
from utils.io import load_csv, save_csv

SPARSITY = 0.9
SMALL = ["--train-subset", 512, "--test-subset", 256, "--epochs", 1, "--milestones", "--batch-size", 64,
         "--sparsities", SPARSITY, "--crop-batches", 1, "--timing-steps", 1]


@pytest.fixture(scope="module")
def ec(tiny_dense):
    ck, res = tiny_dense["checkpoints"], tiny_dense["results"]  # beside the dense run, as by default
    out = ["--checkpoint-dir", ck, "--results-dir", res]
    proc = run_script("earlycrop.py", *TINY_DATA, *SMALL, *out)
    return {"ck": ck / "earlycrop", "res": res / "earlycrop", "proc": proc, "dense": tiny_dense, "out": out}


def run_dir(ec, method):
    return ec["ck"] / method / "sparsity_90"


def rule(trajectory, threshold, cap):
    """EarlyCroP's rule written out again, on the dense trajectory.csv."""
    delta = [float(r["weight_distance"]) for r in trajectory]
    for t in range(2, min(cap, len(delta) - 1) + 1):
        if abs(delta[t] - delta[t - 1]) / delta[1] < threshold:
            return t, True
    return min(cap, len(delta) - 1), False


def authors_rule(dense_run, epochs, factor, cap):
    """The authors' trainer's rule recomputed from the saved weights after every epoch: d_t =
    ‖θ_t − θ_1‖₂ / ‖θ_1‖₂ over all parameters, τ = factor·d_2, the first t ≥ 3 with
    |d_t − d_{t−1}| < τ, else the cap."""
    flat = [torch.cat([p.detach().double().flatten() for p in model_from_checkpoint(
        read_checkpoint(dense_run / f"epoch_{t:03d}.pt")).parameters()]) for t in range(1, epochs + 1)]
    d = {t: float((flat[t - 1] - flat[0]).norm() / flat[0].norm()) for t in range(1, epochs + 1)}
    tau = factor * d[2]
    for t in range(3, min(cap, epochs) + 1):
        if abs(d[t] - d[t - 1]) < tau:
            return t, True
    return min(cap, epochs), False


def test_detection_follows_both_rules(ec):
    det = json.loads((ec["res"] / "detection.json").read_text())
    traj = load_csv(ec["dense"]["results"] / "dense" / "trajectory.csv")
    assert det["detector"] == "authors"  # the default
    assert det["delta"] == pytest.approx([float(r["weight_distance"]) for r in traj])
    assert det["ratio"][:2] == [None, None] and len(det["ratio"]) == len(traj)
    paper = det["rules"]["paper"]["sparsities"]["0.9"]
    assert paper["threshold"] == pytest.approx(0.1)
    assert (paper["prune_epoch"], paper["fired"]) == rule(traj, 0.1, 100)
    authors = det["rules"]["authors"]["sparsities"]["0.9"]
    assert (authors["prune_epoch"], authors["fired"]) == authors_rule(ec["dense"]["run"], 3, 0.1, 100)
    assert det["sparsities"]["0.9"] == authors and det["milestones"] == [2]
    assert f"sparsity 0.9 -> {authors['prune_epoch']}" in ec["proc"].stdout


@pytest.fixture(scope="module")
def dense6(tmp_path_factory, data_dir):
    """A 6-epoch dense run on 256 images that saved every epoch, lr ×0.1 after epoch 4."""
    root = tmp_path_factory.mktemp("dense6")
    run_script("train_dense.py", *TINY_DATA, "--train-subset", 256, "--test-subset", 128, "--epochs", 6,
               "--milestones", 4, "--batch-size", 64, "--save-epochs", *range(1, 7),
               "--checkpoint-dir", root / "checkpoints", "--results-dir", root / "results")
    return root


def detect(root, *args):
    proc = run_script("earlycrop.py", *TINY_DATA, "--train-subset", 256, "--sparsities", 0.3, 0.6, 0.9, 0.98,
                      "--detect-only", "--checkpoint-dir", root / "checkpoints", "--results-dir",
                      root / "results", *args)
    return proc, json.loads((root / "results" / "earlycrop" / "detection.json").read_text())


def test_authors_detector_matches_a_recomputation_from_every_saved_epoch(dense6, tmp_path):
    proc, det = detect(dense6)
    assert det["detector"] == "authors" and not (dense6 / "checkpoints" / "earlycrop" / "sparsity_90").exists()
    for s in (0.3, 0.6, 0.9, 0.98):
        info = det["sparsities"][f"{s:g}"]
        assert (info["prune_epoch"], info["fired"]) == authors_rule(dense6 / "checkpoints" / "dense", 6, 1 - s, 100)
        assert info["after_milestone"] == (4 if info["prune_epoch"] in (5, 6) else None)
    # --detector paper: the paper's rule chooses, on the dense run's Δ_t
    traj = load_csv(dense6 / "results" / "dense" / "trajectory.csv")
    _, paper = detect(dense6, "--detector", "paper")
    assert paper["detector"] == "paper" and paper["rules"]["authors"] == det["rules"]["authors"]
    for s in (0.3, 0.6, 0.9, 0.98):
        assert (paper["sparsities"][f"{s:g}"]["prune_epoch"], paper["sparsities"][f"{s:g}"]["fired"]) == \
            rule(traj, 1 - s, 100)
    # a dense run made before the distance columns: the same numbers through the checked replay
    old = tmp_path / "old"
    shutil.copytree(dense6 / "checkpoints" / "dense", old / "checkpoints" / "dense")
    shutil.copytree(dense6 / "results" / "dense", old / "results" / "dense")
    rows = load_csv(old / "results" / "dense" / "trajectory.csv")
    columns = [c for c in rows[0] if c not in ("distance_from_epoch1", "norm_epoch1")]
    save_csv(rows, old / "results" / "dense" / "trajectory.csv", columns)
    proc, replayed = detect(old)
    assert "replaying its first 6 epochs" in proc.stderr
    for s in (0.3, 0.6, 0.9, 0.98):
        assert replayed["sparsities"][f"{s:g}"] == det["sparsities"][f"{s:g}"]
    assert replayed["d"] == pytest.approx(det["d"], rel=1e-5)


def crop_reference(model, batches):
    """|θ ⊙ Hg| by forward-over-reverse (torch.func.jvp of the gradient), not double backprop."""
    net = model.float().eval()
    weights = {n: w.detach() for n, w in prunable_weights(net).items()}
    others = {n: t for n, t in list(net.named_parameters()) + list(net.named_buffers()) if n not in weights}

    def total_loss(w):
        return sum(F.cross_entropy(torch.func.functional_call(net, {**others, **w}, (x,)), y) for x, y in batches)

    g = torch.func.grad(total_loss)(weights)
    _, hg = torch.func.jvp(torch.func.grad(total_loss), (weights,), (g,))
    return {n: (weights[n] * hg[n]).abs().detach() for n in weights}


def test_crop_u_scores_and_exact_mask(ec):
    draw = torch.load(ec["ck"] / "score_batches.pt", weights_only=True)
    assert draw["batch_size"] == 64 and len(draw["indices"]) == 64 and draw["images"].dtype == torch.uint8
    init, _ = load_checkpoint(ec["dense"]["run"] / "init.pt")
    want = crop_reference(init, score_batches_on(draw, "cpu"))
    scores = torch.load(run_dir(ec, "crop_u") / "scores.pt", weights_only=True)
    assert list(scores) == list(want)
    for n in want:
        assert torch.allclose(scores[n], want[n], rtol=1e-3, atol=1e-5 * float(want[n].max())), n
    mask = torch.load(run_dir(ec, "crop_u") / "mask.pt", weights_only=True)
    flat = torch.cat([s.flatten().double() for s in scores.values()])
    keep = torch.cat([m.flatten() for m in mask.values()])
    k = round(SPARSITY * flat.numel())
    assert int((keep == 0).sum()) == k
    expected = torch.ones_like(flat)
    expected[torch.argsort(flat, stable=True)[:k]] = 0
    assert torch.equal(keep.double(), expected)
    start = read_checkpoint(run_dir(ec, "crop_u") / "start.pt")
    init_ckpt = read_checkpoint(ec["dense"]["run"] / "init.pt")
    for n, t in init_ckpt["model"].items():
        assert torch.equal(start["model"][n], t * mask[n] if n in mask else t), n


def test_earlycrop_u_starts_from_theta_t_times_mask(ec):
    det = json.loads((ec["res"] / "detection.json").read_text())
    t = det["sparsities"]["0.9"]["prune_epoch"]
    theta_t = read_checkpoint(ec["dense"]["run"] / f"epoch_{t:03d}.pt")
    start = read_checkpoint(run_dir(ec, "earlycrop_u") / "start.pt")
    mask = torch.load(run_dir(ec, "earlycrop_u") / "mask.pt", weights_only=True)
    assert start["prune_epoch"] == t
    n = sum(m.numel() for m in mask.values())
    assert sum(int((m == 0).sum()) for m in mask.values()) == round(SPARSITY * n)
    for name, tensor in theta_t["model"].items():
        assert torch.equal(start["model"][name], tensor * mask[name] if name in mask else tensor), name
    # stepped pruning is not one-shot CroP at θ_t: the masks differ
    crop_u_mask = torch.load(run_dir(ec, "crop_u") / "mask.pt", weights_only=True)
    assert any(not torch.equal(mask[k], crop_u_mask[k]) for k in mask)


def test_crop_s_keeps_the_channels_of_the_gate_gradients(ec):
    draw = torch.load(ec["ck"] / "score_batches.pt", weights_only=True)
    batches = score_batches_on(draw, "cpu")
    init, _ = load_checkpoint(ec["dense"]["run"] / "init.pt")
    gate = channel_gate_scores(init, batches)
    saved = torch.load(run_dir(ec, "crop_s") / "scores.pt", weights_only=True)
    assert [torch.equal(a, b) for a, b in zip(gate, saved.values())] == [True] * 9
    selection = select_channels(gate, SPARSITY)
    compact = read_checkpoint(run_dir(ec, "crop_s") / "compact.pt")
    assert compact["widths"] == selection.widths
    assert [c.tolist() for c in compact["channels"].values()] == [i.tolist() for i in selection.indices()]
    # the compact net computes what the masked full network computes
    net = model_from_checkpoint(compact).eval()
    x = batches[0][0]
    with torch.no_grad():
        assert torch.allclose(net(x), masked_model(init, selection.keep)(x), atol=1e-4, rtol=1e-4)
    # random_s: other channels, same count
    random_c = read_checkpoint(run_dir(ec, "random_s") / "compact.pt")
    assert sum(random_c["widths"]) == sum(selection.widths) and random_c["widths"] != selection.widths


def test_final_weights_and_table(ec):
    rows = {r["method"]: r for r in load_csv(ec["res"] / "summary.csv")}
    header = (ec["res"] / "summary.csv").read_text().splitlines()[0]
    assert header == ("method,structured,sparsity,test_acc,weight_sparsity,node_sparsity,prune_epoch,"
                      "train_seconds,batch_ms,peak_mem_mb,disk_mb,params,flops,source,train_flops,train_flops_ratio,"
                      "collapsed_layers,chosen_by_score")
    n_full, channels_full = 270896, 336  # ResNet-20: 3·16 + 3·32 + 3·64 inner channels
    for method in ("crop_u", "crop_s", "earlycrop_u", "earlycrop_s", "random_s"):
        row = rows[method]
        summary = json.loads((ec["res"] / method / "sparsity_90" / "summary.json").read_text())
        assert float(row["test_acc"]) == pytest.approx(summary["test_acc"], abs=1e-3)
        assert float(row["chosen_by_score"]) == pytest.approx(summary["chosen_by_score"])
        assert 0 < summary["chosen_by_score"] <= 1
        final = read_checkpoint(run_dir(ec, method) / "final.pt")
        weights = prunable_weights(model_from_checkpoint(final))
        if method.endswith("_u"):
            mask = final["mask"]
            assert all(torch.all(weights[n][mask[n] == 0] == 0) for n in mask)  # pruned stay zero
            assert row["collapsed_layers"] == ";".join(n for n, m in mask.items() if not m.any())
            zeros = sum(int((m == 0).sum()) for m in mask.values())
            assert float(row["weight_sparsity"]) == pytest.approx(zeros / n_full, abs=1e-6)
            assert row["node_sparsity"] == ""
        else:
            alive = sum(w.numel() for w in weights.values())
            assert float(row["weight_sparsity"]) == pytest.approx(1 - alive / n_full, abs=1e-6)
            assert float(row["node_sparsity"]) == pytest.approx(1 - sum(final["widths"]) / channels_full, abs=1e-6)
            assert int(row["params"]) == sum(p.numel() for p in model_from_checkpoint(final).parameters())
        assert float(row["batch_ms"]) > 0 and float(row["disk_mb"]) > 0
    assert int(rows["crop_u"]["prune_epoch"]) == 0 and rows["earlycrop_s"]["structured"] == "True"
    # EarlyCroP's training time includes the dense epochs before pruning
    traj = load_csv(ec["dense"]["results"] / "dense" / "trajectory.csv")
    t = int(rows["earlycrop_u"]["prune_epoch"])
    dense_part = sum(float(r["seconds"]) for r in traj[1:t + 1])
    own = json.loads((ec["res"] / "earlycrop_u" / "sparsity_90" / "summary.json").read_text())["seconds"]
    assert float(rows["earlycrop_u"]["train_seconds"]) > dense_part + own - 1e-3
    # training FLOPs as Early-Bird counts them: t dense epochs, then E epochs at the row's FLOPs
    f = float(rows["earlycrop_s"]["flops"]) / float(rows["dense"]["flops"])
    assert 0 < f < 1
    assert float(rows["earlycrop_s"]["train_flops_ratio"]) == pytest.approx(
        (int(rows["earlycrop_s"]["prune_epoch"]) + 1 * f) / 3, rel=0.01)
    assert float(rows["earlycrop_u"]["train_flops_ratio"]) == pytest.approx((t + 1) / 3, rel=0.01)  # masked: dense FLOPs
    assert float(rows["dense"]["train_flops_ratio"]) == pytest.approx(1.0)
    # every row counts its epochs 1…E as the dense row does (not the epoch-0 evaluation), plus scoring
    own_traj = load_csv(ec["res"] / "crop_s" / "sparsity_90" / "trajectory.csv")
    score = read_checkpoint(run_dir(ec, "crop_s") / "compact.pt")["score_seconds"]
    assert float(rows["crop_s"]["train_seconds"]) == pytest.approx(
        score + sum(float(r["seconds"]) for r in own_traj[1:]), rel=1e-4)
    # the dense row and the missing baselines with the command that makes them
    dense_summary = json.loads((ec["dense"]["results"] / "dense" / "summary.json").read_text())
    assert float(rows["dense"]["test_acc"]) == pytest.approx(dense_summary["test_acc"], abs=1e-3)
    assert float(rows["dense"]["weight_sparsity"]) == 0
    assert "python prune_at_init.py --methods snip --sparsities 0.9" in rows["snip"]["source"]
    assert "python early_bird.py" in rows["early_bird"]["source"] and "lottery_imp.py" in rows["ltr"]["source"]


def test_rerun_skips_finished_runs(ec):
    final = run_dir(ec, "earlycrop_s") / "final.pt"
    stamp = final.stat().st_mtime_ns
    proc = run_script("earlycrop.py", *TINY_DATA, *SMALL, "--methods", "earlycrop_s", *ec["out"])
    assert "finished already" in proc.stderr
    assert final.stat().st_mtime_ns == stamp
    assert (run_dir(ec, "earlycrop_s") / "compact.pt").stat().st_mtime_ns < stamp  # not rewritten
    methods = {r["method"] for r in load_csv(ec["res"] / "summary.csv")}
    assert {"crop_u", "crop_s", "earlycrop_u", "earlycrop_s", "random_s", "dense"} <= methods  # earlier rows kept


def call_main(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        earlycrop.main([str(a) for a in args])
    return types.SimpleNamespace(returncode=exit_info.value.code, stderr=capsys.readouterr().err)


def test_bad_inputs_exit_2_with_one_line(tiny_dense, tmp_path, capsys):
    run = tiny_dense["run"]
    base = [*TINY_DATA, "--train-subset", 512, "--checkpoint-dir", tmp_path / "ck",
            "--results-dir", tiny_dense["results"], "--run-name", "earlycrop_bad"]
    assert_user_error(call_main(capsys, *base, "--dense-run", tmp_path / "nope"), "python train_dense.py")
    assert_user_error(call_main(capsys, *base, "--dense-run", run, "--sparsities", 1.0), "--sparsities")
    assert_user_error(call_main(capsys, *base, "--dense-run", run, "--threshold", 0), "--threshold")
    assert_user_error(call_main(capsys, *base, "--dense-run", run, "--prune-epoch", 9), "--prune-epoch")
    assert_user_error(call_main(capsys, *base, "--dense-run", run, "--crop-batches", 0), "--crop-batches")
    wrong = [a if a != 512 else 256 for a in base]
    assert_user_error(call_main(capsys, *wrong, "--dense-run", run), "--train-subset 512")
    # Δ_1 = 0: the dense run's weights did not move in epoch 1
    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    shutil.copytree(run, ck / "dense")
    shutil.copytree(tiny_dense["results"] / "dense", res / "dense")
    rows = load_csv(res / "dense" / "trajectory.csv")
    rows[1]["weight_distance"] = "0"
    save_csv(rows, res / "dense" / "trajectory.csv", list(rows[0]))
    proc = run_script("earlycrop.py", *TINY_DATA, "--train-subset", 512, "--checkpoint-dir", ck,
                      "--results-dir", res, check=False)
    assert_user_error(proc, "weight_distance at epoch 1")


def test_docs_list_every_flag():
    helptext = run_script("earlycrop.py", "--help").stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", helptext))
    doc = (REPO / "docs" / "earlycrop.md").read_text()
    assert flags and not [f for f in sorted(flags) if f"`{f}" not in doc]
