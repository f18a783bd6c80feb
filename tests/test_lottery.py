"""Task 3 (lottery_imp.py): schedule, rewinding, masks, controls, resume, the script end to end.

Real CIFAR-10 slice, CPU, tiny settings: masks come from the `tiny_dense` fixture's epoch_003.pt,
survivors are rewound to its init.pt (or epoch_001.pt for late rewinding).
"""
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, TINY_DATA, assert_user_error, run_script

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import lottery_imp  # noqa: E402
import utils.train  # noqa: E402
from data import load_cifar10  # noqa: E402
from models import get_model, load_checkpoint, prunable_weights  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import load_csv, load_json  # noqa: E402
from utils.io import save_json  # noqa: E402
from utils.lottery import (check_imp_history, imp_schedule,  # noqa: E402
                           imp_zero_counts, magnitude_mask_with_zeros, write_mask, write_summary)
from utils.train import evaluate, seeded  # noqa: E402

N_RESNET20 = 270896  # prunable weights of resnet20 (shortcut B)
PRUNABLE = list(prunable_weights(get_model("resnet20")))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def zeros_of(mask):
    return sum(int((m == 0).sum()) for m in mask.values())


def independent_topk(state, zeros):
    """Keep exactly the weights above the `zeros`-th smallest |w| over all prunable layers."""
    flat = torch.cat([state[n].abs().double().flatten() for n in PRUNABLE])
    ordered = flat.sort().values
    assert ordered[zeros - 1] < ordered[zeros], "tie at the threshold: the test cannot decide"
    thresh = ordered[zeros - 1]
    return {n: (state[n].abs().double() > thresh).float() for n in PRUNABLE}


def assert_masks_equal(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n].float(), b[n].float()), n


def assert_rewound(start, rewind, mask):
    """start == rewind × mask on prunable weights; every other entry (BN, biases) == rewind."""
    assert start.keys() == rewind.keys()
    for k, v in rewind.items():
        expected = v * mask[k] if k in mask else v
        assert torch.equal(start[k], expected), k


def assert_pruned_zero(state, mask):
    for n, m in mask.items():
        assert int((state[n][m == 0] != 0).sum()) == 0, n
    assert all(bool((state[n][m == 1] != 0).any()) for n, m in mask.items())


# ---------------------------------------------------------------------------------------------
# The round schedule (pure functions).

def test_default_schedule_lands_on_every_target():
    s = imp_schedule([0.5, 0.7, 0.9], 0.2)
    expected = [0.2, 0.36, 0.488, 0.5, 0.6, 0.68, 0.7, 0.76, 0.808, 0.8464, 0.87712, 0.9]
    assert s == pytest.approx(expected, abs=1e-12)
    assert {0.5, 0.7, 0.9} <= set(s)  # exactly, not approximately
    names = [f"sparsity_{100 * x:g}" for x in s]
    assert names[:4] == ["sparsity_20", "sparsity_36", "sparsity_48.8", "sparsity_50"]
    assert names[-3:] == ["sparsity_84.64", "sparsity_87.712", "sparsity_90"]
    assert len(imp_schedule([0.5, 0.7, 0.9], 0.2)) == 12  # 12 IMP rounds of 160 epochs each


def test_schedule_partial_rounds_and_exact_full_steps():
    # 0.488 -> 0.5 is a partial round (2.3% of the survivors), the rest are full 20% steps
    assert imp_schedule([0.5], 0.2) == pytest.approx([0.2, 0.36, 0.488, 0.5], abs=1e-12)
    assert imp_schedule([0.1], 0.2) == [0.1]            # one partial round
    assert imp_schedule([0.36], 0.2) == [0.2, 0.36]     # a full step that is the target: no extra round
    assert imp_schedule([0.5, 0.7], 0.4) == [0.4, 0.5, 0.7]   # 0.5 -> 0.7 is exactly 40%
    assert imp_schedule([0.7, 0.5, 0.5], 0.5) == [0.5, 0.7]   # unsorted, duplicated targets
    assert imp_schedule([], 0.2) == []


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.5, 0.75])
@pytest.mark.parametrize("targets", [[0.5, 0.7, 0.9], [0.05, 0.5], [0.3, 0.31, 0.99], [0.9]])
def test_schedule_properties(targets, rate):
    s = imp_schedule(targets, rate)
    assert set(targets) <= set(s)
    prev = 0.0
    for x in s:  # increasing, no round removes more than `rate` of what is alive
        assert x > prev and (x - prev) / (1 - prev) <= rate + 1e-9
        prev = x
    # minimal: between two targets, the fewest rounds that rate allows
    prev, rounds = 0.0, 0
    for t in sorted(targets):
        rounds += math.ceil(math.log((1 - t) / (1 - prev)) / math.log(1 - rate) - 1e-9)
        prev = t
    assert len(s) == rounds


def test_zero_counts_exact_targets_and_rate_bound():
    targets, rate, n = [0.5, 0.7, 0.9], 0.2, N_RESNET20
    s = imp_schedule(targets, rate)
    counts = imp_zero_counts(s, targets, n, rate)
    for t in targets:
        assert counts[s.index(t)] == round(t * n)
    prev = 0
    for z in counts:
        assert prev < z <= prev + rate * (n - prev)  # whole weights: never one too many
        prev = z
    # plain rounding would remove 43,344 of 216,717 alive (> 20%) in round 2; the cap keeps 43,343
    assert round(0.36 * n) - counts[0] == 43344 and counts[1] - counts[0] == 43343


def test_bad_rate_is_a_user_error():
    for rate in (0, 1, -0.2, 1.5):
        with pytest.raises(UserError, match="--imp-rate"):
            imp_schedule([0.5], rate)


def test_magnitude_mask_nested_and_exact():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(10, 10, generator=g), "b": torch.randn(300, generator=g)}
    m1 = magnitude_mask_with_zeros(w, 80)
    assert zeros_of(m1) == 80
    flat = torch.cat([w["a"].flatten(), w["b"]]).abs()
    kept = torch.cat([m1["a"].flatten(), m1["b"]]).bool()
    assert flat[kept].min() > flat[~kept].max()  # the 80 smallest, globally
    # a later round's source has other magnitudes; the old zeros must stay zeros
    w2 = {k: v.flip(0) for k, v in w.items()}
    m2 = magnitude_mask_with_zeros(w2, 200, prev_mask=m1)
    assert zeros_of(m2) == 200
    assert all(bool((m2[k][m1[k] == 0] == 0).all()) for k in w)
    with pytest.raises(ValueError):
        magnitude_mask_with_zeros(w, 50, prev_mask=m1)


def test_write_mask_refuses_a_stale_mask(tmp_path):
    m = {"a": torch.ones(4)}
    write_mask(tmp_path / "mask.pt", m, force=False)
    write_mask(tmp_path / "mask.pt", m, force=False)  # same mask: fine
    other = {"a": torch.tensor([1.0, 0, 1, 1])}
    with pytest.raises(UserError, match="--force"):
        write_mask(tmp_path / "mask.pt", other, force=False)
    write_mask(tmp_path / "mask.pt", other, force=True)
    assert torch.equal(load(tmp_path / "mask.pt")["a"], other["a"])


def test_imp_folders_of_another_schedule_are_refused(tmp_path):
    """Round folders are named by sparsity only; one made by another schedule must not be reused."""
    setup = SimpleNamespace(run=SimpleNamespace(force=False), checkpoint_dir=tmp_path / "ck",
                            results_dir=tmp_path / "res")
    save_json({"config": {"imp_schedule": [0.4, 0.5], "imp_rate": 0.4}},
              tmp_path / "res" / "lottery" / "imp" / "sparsity_50" / "summary.json")
    check_imp_history(setup, "lottery", [0.4, 0.5, 0.7], 0.4)  # the same schedule: fine
    with pytest.raises(UserError, match="another IMP schedule"):
        check_imp_history(setup, "lottery", [0.35, 0.5, 0.675, 0.7], 0.35)
    setup.run.force = True
    check_imp_history(setup, "lottery", [0.35, 0.5, 0.675, 0.7], 0.35)


def test_summary_merge_replaces_only_the_methods_run(tmp_path):
    path = tmp_path / "summary.csv"
    row = dict(ticket_acc=1.0, retrained_acc=2.0)
    write_summary([dict(row, method="imp", sparsity=0.5, round=4),
                   dict(row, method="imp", sparsity=0.2, round=1)], path, 90.0)
    write_summary([dict(row, method="oneshot", sparsity=0.5, round=1)], path, 91.0)
    rows = load_csv(path)
    assert [(r["method"], r["sparsity"], r["round"]) for r in rows] == [
        ("oneshot", "0.5", "1"), ("imp", "0.2", "1"), ("imp", "0.5", "4")]
    write_summary([dict(row, method="imp", sparsity=0.7, round=2)], path, 91.0)
    assert [(r["method"], r["sparsity"]) for r in load_csv(path)] == [("oneshot", "0.5"), ("imp", "0.7")]


# ---------------------------------------------------------------------------------------------
# The script end to end (subprocess, as a user runs it) and the checks on what it wrote.

def dirs(root):
    return ["--checkpoint-dir", root / "checkpoints", "--results-dir", root / "results"]


def main(argv):
    """lottery_imp in this process (cheaper than a subprocess; lets a test interrupt it)."""
    lottery_imp.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def e2e(tiny_dense, tmp_path_factory):
    """--mode both at 50/70% with --imp-rate 0.5 (round 2 partial) and both controls."""
    root = tmp_path_factory.mktemp("lottery")
    run = tiny_dense["run"]
    proc = run_script("lottery_imp.py", *TINY_DATA, "--train-subset", 256, "--test-subset", 128,
                      "--epochs", 1, "--from", run / "epoch_003.pt", "--rewind", run / "init.pt",
                      "--sparsities", 0.5, 0.7, "--imp-rate", 0.5, "--controls", "reinit", "random",
                      *dirs(root))
    return {"root": root, "ck": root / "checkpoints" / "lottery", "res": root / "results" / "lottery",
            "run": run, "stdout": proc.stdout}


def test_e2e_outputs_and_summary(e2e):
    ck, res = e2e["ck"], e2e["res"]
    expected = [("oneshot", 0.5, 1), ("oneshot", 0.7, 1), ("imp", 0.5, 1), ("imp", 0.7, 2),
                ("reinit", 0.5, 1), ("reinit", 0.7, 1), ("random", 0.5, 1), ("random", 0.7, 1)]
    rows = load_csv(res / "summary.csv")
    assert list(rows[0]) == ["method", "sparsity", "round", "dense_acc", "ticket_acc", "retrained_acc",
                             "collapsed_layers", "chosen_by_score"]
    assert [(r["method"], float(r["sparsity"]), int(r["round"])) for r in rows] == expected

    # dense_acc: the --from weights on the same 128 test images, evaluated here independently
    _, test = load_cifar10(TINY_DATA[1], download=False, test_subset=128)
    dense_acc = evaluate(load_checkpoint(e2e["run"] / "epoch_003.pt")[0], test)[1]
    for r in rows:
        assert float(r["dense_acc"]) == pytest.approx(dense_acc, abs=1e-3)
        folder = f"{r['method']}/sparsity_{100 * float(r['sparsity']):g}"
        assert {p.name for p in (ck / folder).iterdir()} == {"mask.pt", "start.pt", "final.pt"}
        traj = load_csv(res / folder / "trajectory.csv")
        assert [int(t["epoch"]) for t in traj] == [0, 1]
        assert float(r["ticket_acc"]) == pytest.approx(float(traj[0]["test_acc"]), abs=1e-3)
        assert float(r["retrained_acc"]) == pytest.approx(float(traj[-1]["test_acc"]), abs=1e-3)
        start, final = load(ck / folder / "start.pt"), load(ck / folder / "final.pt")
        assert start["epoch"] == 0 and final["epoch"] == 1 and final["arch"] == "resnet20"
        assert final["config"]["method"] == r["method"]
        # no layer empty at 50-70%, and trained weights have no |w| tie at the cut: all decided
        summary = load_json(res / folder / "summary.json")
        assert r["collapsed_layers"] == "" and summary["collapsed_layers"] == []
        assert float(r["chosen_by_score"]) == summary["chosen_by_score"] == 1.0
    assert "dense (--from) test accuracy" in e2e["stdout"] and "imp" in e2e["stdout"]


def test_e2e_sparsities_land_exactly(e2e):
    for method in ("oneshot", "imp", "reinit", "random"):
        for s in (0.5, 0.7):
            mask = load(e2e["ck"] / method / f"sparsity_{100 * s:g}" / "mask.pt")
            assert list(mask) == PRUNABLE
            assert zeros_of(mask) == round(s * N_RESNET20), (method, s)


def test_e2e_oneshot_rewind_exact_and_mask_is_global_topk(e2e):
    init = load(e2e["run"] / "init.pt")["model"]
    trained = load(e2e["run"] / "epoch_003.pt")["model"]
    for s in (0.5, 0.7):
        d = e2e["ck"] / "oneshot" / f"sparsity_{100 * s:g}"
        mask = load(d / "mask.pt")
        assert_masks_equal(mask, independent_topk(trained, round(s * N_RESNET20)))
        start = load(d / "start.pt")
        assert_masks_equal(start["mask"], mask)
        assert_rewound(start["model"], init, mask)


def test_e2e_imp_rounds_nested_rewound_and_rate_bounded(e2e):
    init = load(e2e["run"] / "init.pt")["model"]
    r1, r2 = e2e["ck"] / "imp" / "sparsity_50", e2e["ck"] / "imp" / "sparsity_70"
    m1, m2 = load(r1 / "mask.pt"), load(r2 / "mask.pt")
    # round 1 from --from (so equal to the one-shot 50% mask), round 2 from round 1's final.pt
    assert_masks_equal(m1, load(e2e["ck"] / "oneshot" / "sparsity_50" / "mask.pt"))
    assert_masks_equal(m2, independent_topk(load(r1 / "final.pt")["model"], round(0.7 * N_RESNET20)))
    assert all(bool((m2[n][m1[n] == 0] == 0).all()) for n in m1)  # nested
    z1, z2 = zeros_of(m1), zeros_of(m2)
    assert z1 <= 0.5 * N_RESNET20 and z2 - z1 <= 0.5 * (N_RESNET20 - z1)
    # IMP's 70% mask is not the one-shot one: it came from other trained weights
    assert not torch.equal(torch.cat([m.flatten() for m in m2.values()]), torch.cat(
        [m.flatten() for m in load(e2e["ck"] / "oneshot" / "sparsity_70" / "mask.pt").values()]))
    for d, m in ((r1, m1), (r2, m2)):
        assert_rewound(load(d / "start.pt")["model"], init, m)
    cfg = load(r2 / "final.pt")["config"]
    assert cfg["round"] == 2 and cfg["imp_schedule"] == [0.5, 0.7] and cfg["imp_rate"] == 0.5


def test_e2e_controls(e2e):
    init = load(e2e["run"] / "init.pt")["model"]
    fresh = seeded(lambda: get_model("resnet20"), 0, stream="reinit").state_dict()
    for s in (0.5, 0.7):
        name = f"sparsity_{100 * s:g}"
        ticket = load(e2e["ck"] / "oneshot" / name / "mask.pt")
        # reinit: the ticket's mask, surviving values from a fresh init (not the rewind weights)
        reinit_mask = load(e2e["ck"] / "reinit" / name / "mask.pt")
        assert_masks_equal(reinit_mask, ticket)
        start = load(e2e["ck"] / "reinit" / name / "start.pt")["model"]
        assert_rewound(start, fresh, ticket)
        for n in PRUNABLE:
            alive = ticket[n] == 1
            assert float((start[n][alive] == init[n][alive]).float().mean()) < 0.01, n
        # random: same per-layer zero counts, other positions, rewind weights
        rmask = load(e2e["ck"] / "random" / name / "mask.pt")
        assert [zeros_of({n: rmask[n]}) for n in PRUNABLE] == [zeros_of({n: ticket[n]}) for n in PRUNABLE]
        overlap = sum(int(((rmask[n] == 0) & (ticket[n] == 0)).sum()) for n in PRUNABLE) / zeros_of(ticket)
        assert overlap < 0.95
        assert_rewound(load(e2e["ck"] / "random" / name / "start.pt")["model"], init, rmask)


def test_e2e_pruned_weights_zero_in_every_final(e2e):
    finals = sorted(e2e["ck"].glob("*/sparsity_*/final.pt"))
    assert len(finals) == 8
    for path in finals:
        mask = load(path.parent / "mask.pt")
        state = load(path)["model"]
        assert_pruned_zero(state, mask)
        start = load(path.parent / "start.pt")["model"]
        assert not torch.equal(state["conv1.weight"], start["conv1.weight"])  # it did train


# ---------------------------------------------------------------------------------------------
# Late rewinding, resume in the middle of IMP, user errors.

def test_late_rewinding(tiny_dense, tmp_path):
    run = tiny_dense["run"]
    main([*TINY_DATA, "--train-subset", 128, "--test-subset", 64, "--epochs", 0,
                      "--mode", "oneshot", "--sparsities", 0.9, "--from", run / "epoch_003.pt",
                      "--rewind", run / "epoch_001.pt", *dirs(tmp_path)])
    # its own folder, so it never clobbers the iteration-0 tickets
    d = tmp_path / "checkpoints" / "lottery_rewind_001" / "oneshot" / "sparsity_90"
    mask = load(d / "mask.pt")
    assert_masks_equal(mask, independent_topk(load(run / "epoch_003.pt")["model"], round(0.9 * N_RESNET20)))
    rewind = load(run / "epoch_001.pt")["model"]
    assert_rewound(load(d / "start.pt")["model"], rewind, mask)
    assert not torch.equal(rewind["bn1.weight"], load(run / "init.pt")["model"]["bn1.weight"])
    rows = load_csv(tmp_path / "results" / "lottery_rewind_001" / "summary.csv")
    assert [(r["method"], r["sparsity"]) for r in rows] == [("oneshot", "0.9")]


class Killed(Exception):
    pass


def test_imp_resumes_mid_round(tiny_dense, tmp_path, monkeypatch):
    """Kill IMP in round 2 after its epoch 1; the rerun skips round 1, resumes round 2 at epoch
    1 and ends exactly where an uninterrupted run ends. Deleting round 2 redoes it identically."""
    run = tiny_dense["run"]
    args = [*TINY_DATA, "--train-subset", 64, "--test-subset", 32, "--epochs", 2, "--mode", "imp",
            "--sparsities", 0.36, "--imp-rate", 0.2, "--from", run / "epoch_003.pt",
            "--rewind", run / "init.pt"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    main(args + dirs(ref))

    save = utils.train.save_torch

    def killing_save(obj, path):
        save(obj, path)
        if Path(path).name == "resume.pt" and "sparsity_36" in str(path) and obj["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(utils.train, "save_torch", killing_save)
    with pytest.raises(Killed):
        main(args + dirs(cut))
    monkeypatch.undo()
    r1 = cut / "checkpoints" / "lottery" / "imp" / "sparsity_20"
    r2 = cut / "checkpoints" / "lottery" / "imp" / "sparsity_36"
    assert (r2 / "resume.pt").is_file() and not (r2 / "final.pt").exists()
    assert load(r2 / "resume.pt")["epoch"] == 1
    r1_time = (r1 / "final.pt").stat().st_mtime_ns

    def assert_same_as_ref():
        for name in ("sparsity_20", "sparsity_36"):
            for f in ("mask.pt", "start.pt", "final.pt"):
                a = load(ref / "checkpoints" / "lottery" / "imp" / name / f)
                b = load(cut / "checkpoints" / "lottery" / "imp" / name / f)
                a, b = (x.get("model", x) for x in (a, b))
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, f)
            ta = load_csv(ref / "results" / "lottery" / "imp" / name / "trajectory.csv")
            tb = load_csv(cut / "results" / "lottery" / "imp" / name / "trajectory.csv")
            assert [{k: v for k, v in r.items() if k != "seconds"} for r in ta] == \
                   [{k: v for k, v in r.items() if k != "seconds"} for r in tb]
        assert load_csv(ref / "results" / "lottery" / "summary.csv") == \
               load_csv(cut / "results" / "lottery" / "summary.csv")

    main(args + dirs(cut))
    assert (r1 / "final.pt").stat().st_mtime_ns == r1_time  # round 1 was skipped
    assert not (r2 / "resume.pt").exists()
    assert load_json(cut / "results" / "lottery" / "imp" / "sparsity_36" / "summary.json")["epochs"] == 2
    assert_same_as_ref()

    # a later round's outputs deleted: only that round is redone, to the same numbers
    shutil.rmtree(r2)
    shutil.rmtree(cut / "results" / "lottery" / "imp" / "sparsity_36")
    main(args + dirs(cut))
    assert (r1 / "final.pt").stat().st_mtime_ns == r1_time
    assert_same_as_ref()


def test_user_errors(tiny_dense, tmp_path, capsys):
    run = tiny_dense["run"]
    common = [*TINY_DATA, *dirs(tmp_path)]
    # as a user sees them: default --from (<checkpoint-dir>/dense/epoch_160.pt) missing here
    assert_user_error(run_script("lottery_imp.py", *common, check=False),
                      "epoch_160.pt", "python train_dense.py")
    assert_user_error(run_script("lottery_imp.py", *common, "--sparsities", 0.5, 1.2, check=False),
                      "--sparsities")
    # the rest in this process: same wrapper, same exit code and one line
    for extra, words in (
            (["--from", run / "epoch_003.pt", "--rewind", tmp_path / "nope.pt"],
             ["nope.pt", "python train_dense.py"]),
            (["--from", tiny_dense["results"] / "dense" / "trajectory.csv"], ["trajectory.csv", "unreadable", "train_dense.py"]),
            (["--imp-rate", 1], ["--imp-rate"]),
            (["--imp-rate", 0.2, "--mode", "imp", "--sparsities", 0], ["nothing to run"])):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([*common, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and all(w in err for w in words), (words, err)
    assert not (tmp_path / "checkpoints" / "lottery").exists()
