"""Trustworthy runs (issue 10): every training script resumes an interrupted run exactly, damaged
files are one-line user errors, runs are identified by what they depend on, nothing is quietly
dropped or rewritten, and the precision/cuDNN defaults fit the hardware.

Interruptions are made in this process: `utils.train.save_torch` is wrapped so that the process
"dies" (an exception nothing catches) right after a run's resume.pt for epoch 1 is on disk, which
is the state a kill at that moment leaves. Tiny real data (64 training images), 2 epochs.
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import early_bird
import lottery_imp
import prune_magnitude
import robustness
import train_dense
import utils.train
from conftest import TINY_DATA, assert_user_error, run_script
from utils.errors import UserError
from utils.io import load_csv, load_json, load_torch, save_json, save_text
from utils.train import (Callback, plan_run, resolve_precision, select_device,
                         train_run)

TINY = [*TINY_DATA, "--train-subset", 64, "--test-subset", 32, "--batch-size", 32]


class Killed(Exception):
    """Stands for SIGKILL: raised right after resume.pt for epoch 1 was written."""


def dirs(root):
    return ["--checkpoint-dir", root / "ck", "--results-dir", root / "res"]


def call(main, args):
    return main([str(a) for a in args])


def call_exit(main, args, capsys):
    """(exit code, stderr) of an in-process run that must fail as a user error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        call(main, args)
    return subprocess.CompletedProcess(args, info.value.code, "", capsys.readouterr().err)


def killed_after_epoch_1(main, args, where, monkeypatch):
    """Run `main` and die once the run whose folder contains `where` has epoch 1 on disk."""
    save = utils.train.save_torch

    def killing_save(obj, path):
        save(obj, path)
        if Path(path).name == "resume.pt" and where in str(path) and obj["epoch"] == 1:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(utils.train, "save_torch", killing_save)
        with pytest.raises(Killed):
            call(main, args)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a, b):
    sa, sb = load(a)["model"], load(b)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), (a, k)


def strip_seconds(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in load_csv(path)]


def mtimes(*roots):
    return {p: p.stat().st_mtime_ns for root in roots for p in Path(root).rglob("*") if p.is_file()}


def resume_and_compare(main, args, where, tmp_path, capsys, monkeypatch, finals):
    """Reference run, killed run, rerun: the rerun says it resumed after epoch 1 (for the run in
    `where`) and every file in `finals` (relative to ck/) equals the reference's."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    call(main, [*args, *dirs(ref)])
    killed_after_epoch_1(main, [*args, *dirs(cut)], where, monkeypatch)
    resume = next((cut / "ck").rglob("resume.pt"))
    assert where in str(resume) and load(resume)["epoch"] == 1
    assert not (resume.parent / "final.pt").exists()
    capsys.readouterr()
    call(main, [*args, *dirs(cut)])
    err = capsys.readouterr().err
    assert f"resuming after epoch 1 from {resume}" in err, err
    assert err.count("resuming after epoch") == 1  # only the interrupted run resumed
    assert not list((cut / "ck").rglob("resume.pt"))
    for name in finals:
        assert_same_weights(ref / "ck" / name, cut / "ck" / name)
    for traj in (ref / "res").rglob("trajectory.csv"):
        assert strip_seconds(traj) == strip_seconds(cut / "res" / traj.relative_to(ref / "res"))
    return ref, cut


@pytest.fixture
def dense64(tmp_path_factory):
    """A 2-epoch dense run on 64 images, every epoch saved (the input of Tasks 2-4 here)."""
    root = tmp_path_factory.mktemp("dense64")
    call(train_dense.main, [*TINY, "--epochs", 2, "--milestones", 1, "--save-epochs", 1, 2,
                            *dirs(root)])
    return root / "ck" / "dense"


# --- the one decision -------------------------------------------------------------------------

def test_plan_run_skip_resume_redo(tmp_path):
    ck, res, config = tmp_path / "ck", tmp_path / "res", {"lr": 0.1, "device": "cpu"}
    assert plan_run(ck, res, config, ["final.pt"]).action == "start"
    ck.mkdir()
    torch.save({"epoch": 1}, ck / "resume.pt")
    assert plan_run(ck, res, config, ["final.pt"]).action == "resume"
    save_json({"test_acc": 50.0, "config": config}, res / "summary.json")
    plan = plan_run(ck, res, config, ["final.pt"])  # finished, final.pt lost
    assert plan.action == "redo" and plan.fresh and plan.missing == ["final.pt"]
    torch.save({}, ck / "final.pt")
    plan = plan_run(ck, res, dict(config, device="cuda"), ["final.pt"])  # run-only key changed
    assert plan.skip and plan.summary["test_acc"] == 50.0
    assert plan_run(ck, res, config, ["final.pt"], force=True).action == "redo"
    with pytest.raises(UserError, match=r"other settings \(lr\).*--force"):
        plan_run(ck, res, dict(config, lr=0.2), ["final.pt"])


def test_callbacks_plug_into_the_loop_and_resume(tmp_path, data_dir):
    """A custom callback gets every row and its state back on resume; optimizer= and stream=."""
    from data import load_cifar10
    from models import get_model
    from utils.config import TrainConfig
    from utils.train import seeded

    train, test = load_cifar10(data_dir, download=False, train_subset=32, test_subset=16)
    hp = TrainConfig(epochs=2, batch_size=16, milestones=(1,), precision="fp32")

    class Counter(Callback):
        outputs = ("count.txt",)

        def __init__(self):
            self.seen = []

        def columns(self, run):
            return {"rows_before": len(run.rows)}

        def on_row(self, run):
            self.seen.append(run.epoch)
            save_text(f"{len(self.seen)}\n", run.ckpt_dir / "count.txt")

        def state_dict(self):
            return {"seen": self.seen}

        def load_state_dict(self, state):
            self.seen = list(state["seen"])

    made = []

    def adam(model, hp):
        made.append(1)
        return torch.optim.Adam(model.parameters(), lr=1e-3)

    def run(name, stream="", **kw):
        counter = Counter()
        model = seeded(lambda: get_model("resnet20"), 0)
        summary = train_run(model, train, test, hp, arch="resnet20", config={"x": 1},
                            ckpt_dir=tmp_path / name / "ck", results_dir=tmp_path / name / "res",
                            callbacks=[counter], save_as=[(2, "final.pt")], stream=stream, **kw)
        return counter, summary

    counter, summary = run("a", optimizer=adam)
    assert made == [1] and counter.seen == [0, 1, 2] and summary["precision"] == "fp32"
    rows = load_csv(tmp_path / "a" / "res" / "trajectory.csv")
    assert [r["rows_before"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0])[-2:] == ["rows_before", "seconds"]
    assert load(tmp_path / "a" / "ck" / "final.pt")["epoch"] == 2
    # a lost output of the callback redoes the finished run
    (tmp_path / "a" / "ck" / "count.txt").unlink()
    counter, _ = run("a", optimizer=adam)
    assert counter.seen == [0, 1, 2] and len(made) == 2
    # another generator stream: other data order, other weights; the same stream: the same
    run("b", optimizer=adam, stream="copy1")
    run("c", optimizer=adam, stream="copy1")
    assert_same_weights(tmp_path / "b" / "ck" / "final.pt", tmp_path / "c" / "ck" / "final.pt")
    a, b = load(tmp_path / "a" / "ck" / "final.pt")["model"], load(tmp_path / "b" / "ck" / "final.pt")["model"]
    assert not torch.equal(a["linear.weight"], b["linear.weight"])


# --- every training script resumes ---------------------------------------------------------

def test_train_dense_resumes(tmp_path, capsys, monkeypatch):
    args = [*TINY, "--epochs", 2, "--milestones", 1, "--save-epochs", 1, 2]
    ref, cut = resume_and_compare(train_dense.main, args, "dense", tmp_path, capsys, monkeypatch,
                                  ["dense/epoch_002.pt", "dense/init.pt"])
    a, b = load(ref / "ck/dense/bn_history.pt"), load(cut / "ck/dense/bn_history.pt")
    assert all(torch.equal(a[k], b[k]) for k in a) and a["bn1"].shape[0] == 3
    summary = load_json(cut / "res/dense/summary.json")
    assert summary["precision"] == resolve_precision("auto", "cpu")  # what was used, not "auto"
    assert summary["config"]["precision"] == "auto"


def test_prune_magnitude_resumes_and_sparsity_0_is_fine_tuned_dense(dense64, tmp_path, capsys,
                                                                     monkeypatch):
    assert prune_magnitude.parse_args([]).sparsities == [0.0, 0.5, 0.7, 0.9]
    args = [*TINY, "--epochs", 2, "--milestones", 1, "--from", dense64 / "epoch_002.pt",
            "--sparsities", 0, 0.5]
    ref, cut = resume_and_compare(prune_magnitude.main, args, "sparsity_50", tmp_path, capsys,
                                  monkeypatch, ["magnitude/sparsity_0/final.pt",
                                                "magnitude/sparsity_50/final.pt"])
    rows = load_csv(cut / "res/magnitude/summary.csv")
    assert [float(r["sparsity"]) for r in rows] == [0, 0.5]
    dense_row = rows[0]
    assert int(dense_row["zeros"]) == 0 and dense_row["pruned_acc"] == dense_row["dense_acc"]
    # sparsity 0 is fine-tuned: the weights moved from the dense ones with the same schedule
    start = load(cut / "ck/magnitude/sparsity_0/start.pt")["model"]
    final = load(cut / "ck/magnitude/sparsity_0/final.pt")["model"]
    assert torch.equal(start["linear.weight"], load(dense64 / "epoch_002.pt")["model"]["linear.weight"])
    assert not torch.equal(start["linear.weight"], final["linear.weight"])
    traj = load_csv(cut / "res/magnitude/sparsity_0/trajectory.csv")
    assert [float(r["lr"]) for r in traj] == [0, 0.01, 0.001]
    # the printed table compares with both the dense and the fine-tuned dense network
    capsys.readouterr()
    stamps = mtimes(cut)
    call(prune_magnitude.main, [*args, *dirs(cut)])
    out = capsys.readouterr().out
    assert "vs dense" in out and "vs fine-tuned dense" in out
    assert mtimes(cut) == stamps  # a finished command writes nothing


def test_lottery_oneshot_resumes_and_rerun_writes_nothing(dense64, tmp_path, capsys, monkeypatch):
    args = [*TINY, "--epochs", 2, "--milestones", 1, "--mode", "oneshot", "--sparsities", 0.5,
            "--from", dense64 / "epoch_002.pt", "--rewind", dense64 / "init.pt"]
    ref, cut = resume_and_compare(lottery_imp.main, args, "oneshot", tmp_path, capsys, monkeypatch,
                                  ["lottery/oneshot/sparsity_50/final.pt"])
    stamps = mtimes(cut)
    call(lottery_imp.main, [*args, *dirs(cut)])
    assert mtimes(cut) == stamps  # mask.pt included
    # a foreign mask.pt is a user error, not silently overwritten
    (cut / "ck/lottery/oneshot/sparsity_50/mask.pt").write_text("not a mask\n")
    proc = call_exit(lottery_imp.main, [*args, *dirs(cut)], capsys)
    assert_user_error(proc, "mask.pt", "not a PyTorch checkpoint", "--force")


def test_lottery_imp_resumes_mid_imp(dense64, tmp_path, capsys, monkeypatch):
    """Round 2 of IMP killed after its epoch 1: the rerun skips round 1, resumes round 2."""
    args = [*TINY, "--epochs", 2, "--milestones", 1, "--mode", "imp", "--sparsities", 0.36,
            "--imp-rate", 0.2, "--from", dense64 / "epoch_002.pt", "--rewind", dense64 / "init.pt"]
    resume_and_compare(lottery_imp.main, args, "sparsity_36", tmp_path, capsys, monkeypatch,
                       ["lottery/imp/sparsity_20/final.pt", "lottery/imp/sparsity_36/final.pt"])


def test_early_bird_resumes_and_moving_the_folder_keeps_tickets_finished(dense64, tmp_path, capsys,
                                                                         monkeypatch):
    shutil.copytree(dense64, tmp_path / "ref" / "ck" / "dense")
    shutil.copytree(dense64, tmp_path / "cut" / "ck" / "dense")
    common = [*TINY, "--epochs", 2, "--milestones", 1, "--ticket-epochs", 1, "--ratios", 0.5,
              "--eb-window", 2, "--speed-batch", 4, "--speed-repeats", 1]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    call(early_bird.main, [*common, *dirs(ref)])  # --dense-run defaults to <checkpoint-dir>/dense
    killed_after_epoch_1(early_bird.main, [*common, *dirs(cut)], "ratio_50", monkeypatch)
    capsys.readouterr()
    call(early_bird.main, [*common, *dirs(cut)])
    assert "resuming after epoch 1" in capsys.readouterr().err
    assert_same_weights(ref / "ck/early_bird/epoch_001/ratio_50/final.pt",
                        cut / "ck/early_bird/epoch_001/ratio_50/final.pt")

    # moved (and given by a relative path is the same: only the weights' hash counts)
    moved = tmp_path / "moved"
    shutil.move(cut, moved)
    stamps = mtimes(moved)
    capsys.readouterr()
    call(early_bird.main, [*common, *dirs(moved)])
    err = capsys.readouterr().err
    assert "finished already" in err and "resuming" not in err
    assert mtimes(moved) == stamps  # no re-timing, no rewritten summary or detection
    config = load(moved / "ck/early_bird/epoch_001/ratio_50/final.pt")["config"]
    assert "dense_run" not in config and len(config["dense_sha256"]) == 64

    # summary.csv keeps the rows of earlier commands for other tickets
    call(early_bird.main, [*common[:-8], "--ratios", 0.3, "--ticket-epochs", 1, "--epochs", 0,
                           "--eb-window", 2, "--speed-batch", 4, "--speed-repeats", 1, *dirs(moved)])
    rows = load_csv(moved / "res/early_bird/summary.csv")
    assert [(r["ticket_epoch"], r["ratio"]) for r in rows] == [("1", "0.3"), ("1", "0.5")]


def test_robustness_resumes_and_a_changed_dense_network_is_never_reused(tmp_path, capsys,
                                                                        monkeypatch):
    args = [*TINY, "--epochs", 2, "--milestones", 1, "--experiments", "adversarial",
            "--sparsities", 0.5, "--eval-subset", 8, "--monitor-subset", 8, "--train-steps", 1,
            "--eval-steps", 1, "--attack-batch", 8]
    run = "robustness/resnet20/ticket_pgd_mask/pgd/sparsity_50"
    ref, cut = resume_and_compare(robustness.main, args, "ticket_pgd_mask/pgd", tmp_path, capsys,
                                  monkeypatch, [f"{run}/final.pt", f"{run}/start.pt"])
    config = load(cut / "ck" / run / "final.pt")["config"]
    dense_final = cut / "ck/robustness/resnet20/dense/pgd/final.pt"
    from utils.pruning import weights_fingerprint
    assert config["mask_source_sha256"] == weights_fingerprint(load(dense_final)["model"])
    # the dense network changes: its tickets are refused, not reused with a stale mask
    ckpt = load(dense_final)
    ckpt["model"]["linear.weight"] += 1
    torch.save(ckpt, dense_final)
    proc = call_exit(robustness.main, [*args, *dirs(cut)], capsys)
    # the runs before it print their "finished already" lines; the error is the last line
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith("error:") and "ticket_pgd_mask" in last
    assert "mask_source_sha256" in last and "--force" in last


# --- damaged files --------------------------------------------------------------------------

def test_damaged_files_are_one_line_user_errors(tmp_path, capsys, monkeypatch):
    args = [*TINY, "--epochs", 2, "--milestones", 1, "--save-epochs", 2]
    killed_after_epoch_1(train_dense.main, [*args, *dirs(tmp_path)], "dense", monkeypatch)
    resume = tmp_path / "ck/dense/resume.pt"
    data = resume.read_bytes()
    resume.write_bytes(data[:len(data) // 2])  # truncated, e.g. by a full disk
    proc = run_script("train_dense.py", *args, *dirs(tmp_path), check=False)
    assert_user_error(proc, str(resume), "damaged", "--force")
    resume.write_bytes(b"\x00garbage")  # foreign
    proc = call_exit(train_dense.main, [*args, *dirs(tmp_path)], capsys)
    assert_user_error(proc, "resume.pt", "not a PyTorch checkpoint", "--force")
    resume.unlink()
    call(train_dense.main, [*args, *dirs(tmp_path)])
    summary = tmp_path / "res/dense/summary.json"
    summary.write_text("{garbage")
    proc = call_exit(train_dense.main, [*args, *dirs(tmp_path)], capsys)
    assert_user_error(proc, str(summary), "not valid JSON", "--force")
    summary.write_text("[1, 2]")
    assert_user_error(call_exit(train_dense.main, [*args, *dirs(tmp_path)], capsys),
                      "summary.json", "list")
    history = tmp_path / "ck/dense/bn_history.pt"
    history.write_text("γ")
    proc = call_exit(early_bird.main, [*TINY_DATA, "--dense-run", tmp_path / "ck/dense",
                                       "--detect-only", "--results-dir", tmp_path / "eb"], capsys)
    assert_user_error(proc, "bn_history.pt", "not a PyTorch checkpoint", "python train_dense.py")


def test_guarded_loaders(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch(tmp_path / "ok.pt")["a"], torch.ones(2))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list"):
        load_torch(tmp_path / "list.pt", "fix it")
    with pytest.raises(UserError, match="not found; fix it"):
        load_torch(tmp_path / "none.pt", "fix it")
    save_json({"a": 1}, tmp_path / "ok.json")
    assert load_json(tmp_path / "ok.json") == {"a": 1}
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not valid JSON.*redo"):
        load_json(tmp_path / "bad.json", "redo")


# --- nothing quietly dropped ------------------------------------------------------------------

def test_save_epochs_beyond_epochs_is_an_error(tmp_path, capsys):
    proc = call_exit(train_dense.main, [*TINY, "--epochs", 3, "--save-epochs", 500, *dirs(tmp_path)],
                     capsys)
    assert_user_error(proc, "--save-epochs 500", "--epochs")
    assert not tmp_path.joinpath("ck").exists()
    assert train_dense.parse_args([]).save_epochs is None  # default: 10 30 50 100 160 within --epochs


def test_ignore_layers_leave_the_classifier_whole(dense64, tmp_path, capsys):
    base = [*TINY, "--epochs", 0, "--from", dense64 / "epoch_002.pt", "--sparsities", 0.5]
    call(prune_magnitude.main, [*base, "--ignore-layers", "linear", *dirs(tmp_path)])
    mask = load(tmp_path / "ck/magnitude/sparsity_50/mask.pt")
    assert "linear.weight" not in mask and "conv1.weight" in mask
    candidates = sum(m.numel() for m in mask.values())
    zeros = sum(int((m == 0).sum()) for m in mask.values())
    assert zeros == round(0.5 * candidates)
    final = load(tmp_path / "ck/magnitude/sparsity_50/final.pt")
    assert torch.equal(final["model"]["linear.weight"], load(dense64 / "epoch_002.pt")["model"]["linear.weight"])
    assert final["config"]["ignore_layers"] == ["linear.weight"]
    row = load_csv(tmp_path / "res/magnitude/summary.csv")[0]
    assert int(row["prunable"]) == candidates and int(row["zeros"]) == zeros
    call(lottery_imp.main, [*base, "--ignore-layers", "linear", "--mode", "oneshot",
                            "--rewind", dense64 / "init.pt", *dirs(tmp_path / "lot")])
    ticket = load(tmp_path / "lot/ck/lottery/oneshot/sparsity_50/mask.pt")
    assert "linear.weight" not in ticket and sum(int((m == 0).sum()) for m in ticket.values()) == zeros
    proc = call_exit(prune_magnitude.main, [*base, "--ignore-layers", "fc", *dirs(tmp_path)], capsys)
    assert_user_error(proc, "--ignore-layers fc", "linear")


def test_run_all_keeps_the_log_of_every_attempt(tmp_path):
    args = ["--preset", "smoke", "--data-dir", tmp_path / "nodata", "--no-download",
            "--results-dir", tmp_path / "r", "--checkpoint-dir", tmp_path / "ck"]
    for _ in range(2):
        proc = run_script("run_all.py", *args, check=False)
        assert proc.returncode == 2 and "CIFAR-10 not found" in proc.stderr
    log = (tmp_path / "r/logs/train_dense.log").read_text()
    assert log.count("===== run_all attempt,") == 2 and log.count("CIFAR-10 not found") == 2


# --- GPU defaults ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:CUDA is not available")
@pytest.mark.parametrize("capability, cpu_bf16, device, want", [
    ((9, 0), False, "cuda", "bf16"),   # H100
    ((8, 0), False, "cuda", "bf16"),   # A100
    ((7, 5), True, "cuda", "fp32"),    # T4
    ((7, 0), False, "cuda", "fp32"),   # V100
    (None, True, "cpu", "bf16"),       # AVX512-BF16 / AMX
    (None, False, "cpu", "fp32"),      # AVX2 only
])
def test_precision_auto_follows_the_hardware(monkeypatch, capability, cpu_bf16, device, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(utils.train, "cpu_has_native_bf16", lambda: cpu_bf16)
    assert resolve_precision("auto", device) == want
    assert resolve_precision("fp32", device) == "fp32" and resolve_precision("bf16", device) == "bf16"
    autocast = utils.train.autocast(device, "auto")
    assert isinstance(autocast, torch.autocast) == (want == "bf16")
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("fp16", device)


def test_cudnn_autotuning_unless_deterministic(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic
    try:
        assert select_device("cuda").type == "cuda"
        assert cudnn.benchmark and not cudnn.deterministic
        select_device("auto", deterministic=True)
        assert not cudnn.benchmark and cudnn.deterministic
    finally:
        cudnn.benchmark, cudnn.deterministic = saved
    args = train_dense.parse_args(["--deterministic"])
    assert args.deterministic and not train_dense.parse_args([]).deterministic


def test_no_code_refers_to_the_shared_folder():
    repo = Path(__file__).resolve().parents[1]
    needle = "shared/" + "interface"  # spelled apart so this file does not match itself
    offenders = [str(p.relative_to(repo)) for p in repo.rglob("*.py")
                 if needle in p.read_text(encoding="utf-8")]
    assert offenders == []
