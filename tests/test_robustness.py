"""robustness.py end to end on the real slice, and adversarial training through the task flags."""
import shutil

import pytest
import torch

from conftest import TINY_DATA, assert_user_error, run_script
from data import load_cifar10
from models import get_model, load_checkpoint, prunable_weights
from utils.attacks import PGDTraining, RobustMonitor, robust_evaluate
from utils.experiment import task_parser, task_setup
from utils.io import load_csv, load_json
from utils.pruning import apply_mask, global_magnitude_mask
from utils.train import checkpoint, seeded, train_run

# Small enough for a 2-core CPU: 6 training runs + 4 evaluations in the end-to-end test.
TINY = ["--train-subset", 256, "--test-subset", 128, "--epochs", 1, "--batch-size", 128]
ATTACK = ["--eval-subset", 64, "--monitor-subset", 16, "--train-steps", 2, "--eval-steps", 5,
          "--sparsities", 0.5]
SUMMARY_HEAD = ["model", "arch", "training", "sparsity", "clean_acc", "fgsm_acc", "pgd_acc"]


def test_adversarial_training_through_the_task_flags(tmp_path, data_dir, monkeypatch):
    """--adv-train on any task parser: Setup.train_kwargs() hands PGD-AT to train_run."""
    common = [*map(str, TINY_DATA), "--data-dir", str(data_dir), "--train-subset", "64",
              "--test-subset", "32", "--epochs", "1", "--batch-size", "32",
              "--checkpoint-dir", str(tmp_path / "ck"), "--results-dir", str(tmp_path / "res")]
    natural = task_setup(task_parser("t").parse_args(common))
    assert natural.train_kwargs() == {}  # default off: nothing changes for the other tasks
    assert not any(k.startswith("adv_") for k in natural.config())

    setup = task_setup(task_parser("t").parse_args(
        common + ["--adv-train", "--adv-steps", "1", "--adv-monitor-subset", "16"]))
    kwargs = setup.train_kwargs()
    assert isinstance(kwargs["perturb"], PGDTraining) and isinstance(kwargs["extra_metrics"], RobustMonitor)
    assert kwargs["perturb"].steps == 1 and kwargs["perturb"].eps == pytest.approx(8 / 255)
    calls = []
    call = PGDTraining.__call__
    monkeypatch.setattr(PGDTraining, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    config = setup.config(arch="resnet20")
    assert config["adv_train"] is True and config["adv_steps"] == 1
    model = seeded(lambda: get_model("resnet20"), 0)
    summary = train_run(model, setup.train, setup.test, setup.hp, arch="resnet20", config=config,
                        ckpt_dir=tmp_path / "ck" / "run", results_dir=tmp_path / "res" / "run",
                        save_as=[(1, "final.pt")], **kwargs)
    assert len(calls) == 2  # every training batch (64 images / 32) was perturbed
    rows = load_csv(tmp_path / "res" / "run" / "trajectory.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"fgsm_acc", "pgd_acc"} <= rows[0].keys()
    assert all(0 <= float(r["pgd_acc"]) <= 100 for r in rows)
    assert summary["config"]["adv_train"] is True
    # the pgd_acc column is the monitor's number for the saved weights
    final, _ = load_checkpoint(tmp_path / "ck" / "run" / "final.pt")
    again = RobustMonitor(setup.test, steps=1, seed=0, limit=16)(final)
    assert float(rows[1]["pgd_acc"]) == pytest.approx(again["pgd_acc"])


def fake_task_checkpoints(tiny_dense, root, results):
    """The layouts of Tasks 2-4, made from tiny_dense (their scripts are not needed here), and a
    dense run trained adversarially through train_dense.py's --adv-train flag."""
    shutil.copytree(tiny_dense["run"], root / "dense")
    run_script("train_dense.py", *TINY_DATA, "--train-subset", 64, "--test-subset", 32,
               "--epochs", 1, "--batch-size", 32, "--adv-train", "--adv-steps", 1,
               "--adv-monitor-subset", 16, "--run-name", "dense_pgd",
               "--checkpoint-dir", root, "--results-dir", results)
    traj = load_csv(results / "dense_pgd" / "trajectory.csv")
    assert len(traj) == 2 and {"fgsm_acc", "pgd_acc", "weight_distance"} <= traj[0].keys()
    model, ckpt = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
    for name, s in (("magnitude/sparsity_50", 0.5), ("lottery/imp/sparsity_90", 0.9)):
        mask = global_magnitude_mask(prunable_weights(model), s)
        pruned, _ = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
        apply_mask(pruned, mask)
        (root / name).mkdir(parents=True)
        torch.save(checkpoint(pruned, "resnet20", 3, ckpt["config"], mask=mask), root / name / "final.pt")
    widths = [8] * 3 + [16] * 3 + [32] * 3  # a compact net keeping half of every block's channels
    compact = seeded(lambda: get_model("resnet20", widths=widths), 1)
    (root / "early_bird/epoch_002/ratio_50").mkdir(parents=True)
    torch.save(checkpoint(compact, "resnet20", 1, ckpt["config"], widths=widths),
               root / "early_bird/epoch_002/ratio_50/final.pt")


def test_end_to_end(tmp_path, tiny_dense, data_dir):
    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    fake_task_checkpoints(tiny_dense, ck, tmp_path / "task_results")
    args = [*TINY_DATA, *TINY, *ATTACK, "--checkpoint-dir", ck, "--results-dir", res]
    proc = run_script("robustness.py", *args, "--experiments", "evaluate", "adversarial")

    rows = load_csv(res / "robustness" / "summary.csv")
    assert list(rows[0])[:7] == SUMMARY_HEAD
    by_model = {r["model"]: r for r in rows}
    base = "robustness/resnet20"
    tickets = [f"{base}/ticket_{m}_mask/{t}/sparsity_50" for m in ("natural", "pgd")
               for t in ("natural", "pgd")]
    assert set(by_model) == {"dense", "dense_pgd", "magnitude/sparsity_50", "lottery/imp/sparsity_90",
                             "early_bird/epoch_002/ratio_50", f"{base}/dense/natural",
                             f"{base}/dense/pgd", *tickets}
    assert by_model["dense"]["checkpoint"].endswith("dense/epoch_003.pt")  # the highest epoch
    sparsity = {m: float(r["sparsity"]) for m, r in by_model.items()}
    assert sparsity["dense"] == 0 and sparsity[f"{base}/dense/pgd"] == 0
    assert sparsity["magnitude/sparsity_50"] == pytest.approx(0.5, abs=1e-5)
    assert sparsity["lottery/imp/sparsity_90"] == pytest.approx(0.9, abs=1e-5)
    full = sum(w.numel() for w in prunable_weights(get_model("resnet20")).values())
    compact = sum(w.numel() for w in prunable_weights(
        get_model("resnet20", widths=[8] * 3 + [16] * 3 + [32] * 3)).values())
    assert sparsity["early_bird/epoch_002/ratio_50"] == pytest.approx(1 - compact / full, abs=1e-5)
    assert all(sparsity[t] == pytest.approx(0.5, abs=1e-5) for t in tickets)
    training = {m: r["training"] for m, r in by_model.items()}
    assert training[f"{base}/dense/pgd"] == "pgd" and training[f"{base}/dense/natural"] == "natural"
    assert [training[t] for t in tickets] == ["natural", "pgd", "natural", "pgd"]
    assert training["dense_pgd"] == "pgd" and by_model["dense_pgd"]["checkpoint"].endswith("epoch_001.pt")
    assert all(training[m] == "natural" for m in by_model
               if not m.startswith("robustness") and m != "dense_pgd")
    for r in rows:  # pgd ≤ fgsm ≤ clean within noise (3 of 64 images)
        clean, f, p = float(r["clean_acc"]), float(r["fgsm_acc"]), float(r["pgd_acc"])
        assert r["images"] == "64" and 0 <= p <= f + 4.7 and f <= clean + 4.7, r

    # checkpoints: the masks come from the dense networks' final weights, the tickets start
    # from the masked shared initialisation, and PGD runs log robust accuracy every epoch.
    for source in ("natural", "pgd"):
        trained, _ = load_checkpoint(ck / base / "dense" / source / "final.pt")
        want = global_magnitude_mask(prunable_weights(trained), 0.5)
        for t in ("natural", "pgd"):
            run = ck / base / f"ticket_{source}_mask" / t / "sparsity_50"
            mask = torch.load(run / "mask.pt")
            assert all(torch.equal(mask[n], want[n]) for n in want)
            start, _ = load_checkpoint(run / "start.pt")
            init, _ = load_checkpoint(ck / base / "dense" / source / "init.pt")
            w0, ws = prunable_weights(init), prunable_weights(start)
            assert all(torch.equal(ws[n], w0[n] * mask[n]) for n in mask)
    init_n = load_checkpoint(ck / base / "dense/natural/init.pt")[0].state_dict()
    init_p = load_checkpoint(ck / base / "dense/pgd/init.pt")[0].state_dict()
    assert all(torch.equal(init_n[k], init_p[k]) for k in init_n)  # one shared initialisation
    traj = load_csv(res / base / "dense" / "pgd" / "trajectory.csv")
    assert len(traj) == 2 and "pgd_acc" in traj[0] and traj[1]["pgd_acc"] != ""
    assert load_json(res / base / "dense" / "pgd" / "summary.json")["config"]["adv_train"] is True

    table = load_csv(res / "robustness" / "tickets.csv")
    assert [(r["arch"], float(r["sparsity"])) for r in table] == [("resnet20", 0), ("resnet20", 0.5)]
    gain = table[1]
    assert float(gain["mask_gain_pgd_acc"]) == pytest.approx(
        float(gain["boosting_ticket_pgd_acc"]) - float(gain["natural_mask_pgd_training_pgd_acc"]))

    # robust accuracy reproduces from the saved checkpoint with the same seed
    _, test = load_cifar10(data_dir, download=False, test_subset=128)
    row = by_model[f"{base}/ticket_pgd_mask/pgd/sparsity_50"]
    model, _ = load_checkpoint(row["checkpoint"])
    again = robust_evaluate(model, test, steps=5, seed=0, limit=64)
    for k in ("clean_acc", "fgsm_acc", "pgd_acc"):
        assert float(row[k]) == pytest.approx(again[k], abs=1e-4)

    # a second run skips the finished training runs and reuses the evaluations
    before = (res / "robustness" / "summary.csv").read_text()
    proc = run_script("robustness.py", *args, "--experiments", "evaluate", "adversarial")
    assert "finished already" in proc.stderr + proc.stdout
    assert (res / "robustness" / "summary.csv").read_text() == before


def test_size_experiment_and_user_errors(tmp_path):
    ck, res = tmp_path / "ck", tmp_path / "res"
    # nothing to evaluate: one line naming the commands that make checkpoints
    proc = run_script("robustness.py", *TINY_DATA, *TINY, "--experiments", "evaluate",
                      "--checkpoint-dir", ck, "--results-dir", res, check=False)
    assert_user_error(proc, "train_dense.py", "nothing to evaluate")
    proc = run_script("robustness.py", *TINY_DATA, "--eps", -1, check=False)
    assert_user_error(proc, "--eps")
    proc = run_script("robustness.py", *TINY_DATA, "--large-arch", "resnet99", check=False)
    assert_user_error(proc, "resnet99")

    # size: the same grid for the large architecture (no training here: --epochs 0)
    run_script("robustness.py", *TINY_DATA, *TINY, *ATTACK, "--epochs", 0, "--experiments", "size",
               "--train-subset", 64, "--test-subset", 32, "--eval-subset", 16,
               "--checkpoint-dir", ck, "--results-dir", res)
    rows = load_csv(res / "robustness" / "summary.csv")
    assert {r["arch"] for r in rows} == {"resnet56"} and len(rows) == 6
    assert {r["experiment"] for r in rows} == {"size"}
    assert (ck / "robustness/resnet56/ticket_pgd_mask/pgd/sparsity_50/final.pt").is_file()
