"""prune_magnitude.py end to end on the real CIFAR-10 slice, from the tiny dense run."""
import subprocess

import numpy as np
import pytest
import torch

import prune_magnitude
from conftest import DATA_DIR, TINY_DATA, assert_user_error, run_script
from data import load_cifar10
from models import load_checkpoint, prunable_weights
from utils.io import load_csv, load_json
from utils.train import evaluate

SPARSITIES = (0.5, 0.9)
FOLDERS = {0.5: "sparsity_50", 0.9: "sparsity_90"}
SUBSETS = ["--train-subset", 256, "--test-subset", 128]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pruned(tiny_dense, tmp_path_factory):
    root = tmp_path_factory.mktemp("magnitude")
    args = [*TINY_DATA, *SUBSETS, "--from", tiny_dense["run"] / "epoch_003.pt",
            "--sparsities", *SPARSITIES, "--epochs", 2, "--milestones", 1,
            "--checkpoint-dir", root / "checkpoints", "--results-dir", root / "results"]
    proc = run_script("prune_magnitude.py", *args)
    from_model, _ = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
    return {"args": args, "proc": proc, "from_path": tiny_dense["run"] / "epoch_003.pt", "ck": root / "checkpoints" / "magnitude",
            "res": root / "results" / "magnitude", "from": from_model.state_dict(),
            "names": list(prunable_weights(from_model))}


def independent_global_mask(state, names, s):
    """Global top-k on |w| with numpy: stable sort, ties by (layer order, flat index)."""
    flat = np.concatenate([state[n].numpy().ravel() for n in names])
    pruned = np.argsort(np.abs(flat), kind="stable")[:round(s * flat.size)]
    keep = np.ones(flat.size, dtype=np.float32)
    keep[pruned] = 0
    out, start = {}, 0
    for n in names:
        out[n] = torch.from_numpy(keep[start:start + state[n].numel()]).view(state[n].shape)
        start += state[n].numel()
    return out


def test_mask_is_the_global_top_k_of_the_from_weights(pruned):
    for s, folder in FOLDERS.items():
        mask = load(pruned["ck"] / folder / "mask.pt")
        assert list(mask) == pruned["names"]  # every Conv2d/Linear weight, no BN, no bias
        expected = independent_global_mask(pruned["from"], pruned["names"], s)
        for n in pruned["names"]:
            assert torch.equal(mask[n], expected[n]), n
        report = load_json(pruned["res"] / folder / "sparsity_report.json")
        n_total = sum(m.numel() for m in mask.values())
        assert report["overall"]["zeros"] == round(s * n_total) and report["overall"]["total"] == n_total
        assert report["layers"]["linear.weight"]["zeros"] == int((mask["linear.weight"] == 0).sum())


def test_final_weights_have_exactly_the_masks_zeros(pruned):
    for s, folder in FOLDERS.items():
        mask = load(pruned["ck"] / folder / "mask.pt")
        final = load(pruned["ck"] / folder / "final.pt")
        assert final["epoch"] == 2 and final["arch"] == "resnet20"
        assert all(torch.equal(final["mask"][n], mask[n]) for n in mask)
        zeros = total = 0
        for n in pruned["names"]:
            w = final["model"][n]  # the weights alone, the mask not applied
            assert torch.equal(w == 0, mask[n] == 0), n
            zeros, total = zeros + int((w == 0).sum()), total + w.numel()
        assert zeros == round(s * total)
        # the network still loads as a model, and was retrained (weights moved)
        model, _ = load_checkpoint(pruned["ck"] / folder / "final.pt")
        assert all(torch.equal(w == 0, mask[n] == 0) for n, w in prunable_weights(model).items())
        start = load(pruned["ck"] / folder / "start.pt")
        assert not torch.equal(final["model"]["linear.weight"], start["model"]["linear.weight"])


def test_start_is_the_from_weights_times_the_mask(pruned):
    for folder in FOLDERS.values():
        mask = load(pruned["ck"] / folder / "mask.pt")
        start = load(pruned["ck"] / folder / "start.pt")
        assert start["epoch"] == 0
        for k, v in pruned["from"].items():
            expected = v * mask[k] if k in mask else v  # BN, biases, buffers: untouched
            assert torch.equal(start["model"][k], expected), k


def test_summary_agrees_with_trajectories_and_evaluations(pruned):
    rows = load_csv(pruned["res"] / "summary.csv")
    assert list(rows[0])[:4] == ["sparsity", "dense_acc", "pruned_acc", "retrained_acc"]
    assert [float(r["sparsity"]) for r in rows] == list(SPARSITIES)
    _, test = load_cifar10(DATA_DIR, download=False, train_subset=256, test_subset=128)
    dense, _ = load_checkpoint(pruned["from_path"])
    dense_acc = evaluate(dense, test)[1]
    for row, (s, folder) in zip(rows, FOLDERS.items()):
        traj = load_csv(pruned["res"] / folder / "trajectory.csv")
        assert [int(r["epoch"]) for r in traj] == [0, 1, 2]
        assert [float(r["lr"]) for r in traj] == [0, 0.01, 0.001]  # the fine-tuning schedule
        assert row["pruned_acc"] == traj[0]["test_acc"]
        assert row["retrained_acc"] == traj[-1]["test_acc"]
        assert float(row["dense_acc"]) == pytest.approx(dense_acc, abs=1e-3)
        assert int(row["zeros"]) == round(s * int(row["prunable"]))
        pruned_model, _ = load_checkpoint(pruned["ck"] / folder / "start.pt")
        assert float(row["pruned_acc"]) == pytest.approx(evaluate(pruned_model, test)[1], abs=1e-3)
        summary = load_json(pruned["res"] / folder / "summary.json")
        assert summary["sparsity"] == pytest.approx(s, abs=1e-5)
    assert "sparsity" in pruned["proc"].stdout and "retrained" in pruned["proc"].stdout


def test_rerun_skips_and_force_redoes_with_the_same_numbers(pruned):
    files = [pruned["ck"] / f / n for f in FOLDERS.values() for n in ("mask.pt", "start.pt", "final.pt")]
    files += [pruned["res"] / f / "trajectory.csv" for f in FOLDERS.values()]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    summary_csv = (pruned["res"] / "summary.csv").read_text()
    proc = run_script("prune_magnitude.py", *pruned["args"])
    assert proc.stdout.count("finished already") == 2
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert (pruned["res"] / "summary.csv").read_text() == summary_csv

    # --force on one sparsity: retrained again from scratch, to the same numbers (same seed)
    folder = pruned["ck"] / "sparsity_90"
    before_final = load(folder / "final.pt")["model"]
    before_traj = load_csv(pruned["res"] / "sparsity_90" / "trajectory.csv")
    args = list(pruned["args"])
    args[args.index("--sparsities") + 1:args.index("--sparsities") + 3] = [0.9]
    proc = run_script("prune_magnitude.py", *args, "--force")
    assert "finished already" not in proc.stdout
    assert (folder / "final.pt").stat().st_mtime_ns != stamps[folder / "final.pt"]
    assert (pruned["ck"] / "sparsity_50" / "final.pt").stat().st_mtime_ns == \
        stamps[pruned["ck"] / "sparsity_50" / "final.pt"]
    after_traj = load_csv(pruned["res"] / "sparsity_90" / "trajectory.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(after_traj) == strip(before_traj)
    after_final = load(folder / "final.pt")["model"]
    assert all(torch.equal(before_final[k], after_final[k]) for k in before_final)
    # summary.csv holds the sparsities of the latest command
    assert (pruned["res"] / "summary.csv").read_text().splitlines()[1:] == \
        [line for line in summary_csv.splitlines()[1:] if line.startswith("0.9,")]


def test_other_flags_on_a_finished_run_are_refused_and_layerwise_works(pruned):
    proc = run_script("prune_magnitude.py", *pruned["args"], "--scope", "layerwise", check=False)
    assert_user_error(proc, "scope", "--force")
    args = list(pruned["args"])
    args[args.index("--sparsities") + 1:args.index("--sparsities") + 3] = [0.7]
    run_script("prune_magnitude.py", *args, "--scope", "layerwise", "--run-name", "lw",
               "--epochs", 0)
    mask = load(pruned["ck"].parent / "lw" / "sparsity_70" / "mask.pt")
    for n in pruned["names"]:
        assert int((mask[n] == 0).sum()) == round(0.7 * mask[n].numel()), n
    final = load(pruned["ck"].parent / "lw" / "sparsity_70" / "final.pt")
    assert final["epoch"] == 0 and all(torch.equal(final["model"][n] == 0, mask[n] == 0)
                                       for n in pruned["names"])
    rows = load_csv(pruned["res"].parent / "lw" / "summary.csv")
    assert len(rows) == 1 and rows[0]["pruned_acc"] == rows[0]["retrained_acc"]


def in_process(capsys, *args):
    """Run prune_magnitude.main in this process (no torch import per call): (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        prune_magnitude.main([str(a) for a in args])
    proc = subprocess.CompletedProcess(args, exit_info.value.code, "", capsys.readouterr().err)
    return proc


def test_missing_from_names_the_command_that_makes_it(tmp_path, capsys):
    proc = run_script("prune_magnitude.py", *TINY_DATA, *SUBSETS, "--checkpoint-dir", tmp_path,
                      "--results-dir", tmp_path / "res", check=False)
    assert_user_error(proc, str(tmp_path / "dense" / "epoch_160.pt"), "python train_dense.py",
                      f"--checkpoint-dir {tmp_path}")
    proc = in_process(capsys, *TINY_DATA, *SUBSETS, "--from", tmp_path / "none.pt",
                      "--results-dir", tmp_path / "res")
    assert_user_error(proc, "none.pt", "python train_dense.py")
    assert not (tmp_path / "res").exists()


def test_sparsity_outside_0_1_is_refused(tmp_path, capsys):
    proc = run_script("prune_magnitude.py", *TINY_DATA, "--sparsities", "0.5", "1.0",
                      "--results-dir", tmp_path, check=False)
    assert_user_error(proc, "--sparsities", "1.0")
    for bad in ("-0.1", "1.5"):
        proc = in_process(capsys, *TINY_DATA, "--sparsities", "0.5", bad, "--results-dir", tmp_path)
        assert_user_error(proc, "--sparsities", bad)
    assert not any(tmp_path.iterdir())
