"""ticket_transfer.py: MNIST IDX loading, the LeNets, per-layer IMP, transfer, Adam vs SGD.

The end-to-end run uses the real MNIST slice (512 training, 256 test images, 1 epoch, 2 rounds).
"""
import gzip
import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, assert_user_error, run_script
from data import load_mnist
from models import count_params, get_model, load_checkpoint, prunable_weights
from utils.config import TrainConfig
from utils.errors import UserError
from utils.io import load_csv, save_torch
from utils.ticket_transfer import (SUMMARY_COLUMNS, imp_mask, kept_after, optimizer_factory,
                                   output_layer, round_keep_counts)
from utils.train import checkpoint, seeded, train_run

IMAGES, LABELS = 2051, 2049


# ---------------------------------------------------------------------------------------------
# IDX files built by hand

def idx_images(images, magic=IMAGES, rows=28, cols=28, count=None):
    n = len(images) if count is None else count
    return struct.pack(">IIII", magic, n, rows, cols) + np.asarray(images, dtype=np.uint8).tobytes()


def idx_labels(labels, magic=LABELS, count=None):
    n = len(labels) if count is None else count
    return struct.pack(">II", magic, n) + np.asarray(labels, dtype=np.uint8).tobytes()


def write_mnist(root, train=None, test=None, gz=("test",)):
    """A tiny MNIST in root/MNIST/raw: file bytes per part, gzip-compressed for parts in `gz`."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    parts = {"train": train or {}, "t10k": test or {}}
    made = {}
    for part, given in parts.items():
        n = 5 if part == "train" else 3
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        files = {"images-idx3-ubyte": given.get("images", idx_images(images)),
                 "labels-idx1-ubyte": given.get("labels", idx_labels(labels))}
        for stem, blob in files.items():
            name = f"{part}-{stem}"
            if ("test" if part == "t10k" else "train") in gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
        made[part] = (images, labels)
    return made


def test_idx_plain_and_gz_are_read_exactly(tmp_path):
    made = write_mnist(tmp_path, gz=("test",))  # train plain, test .gz
    train, test = load_mnist(tmp_path, download=False)
    assert train.images.dtype == torch.uint8 and train.images.shape == (5, 1, 28, 28)
    assert torch.equal(train.images[:, 0], torch.from_numpy(made["train"][0]))
    assert torch.equal(train.labels, torch.from_numpy(made["train"][1].astype(np.int64)))
    assert torch.equal(test.images[:, 0], torch.from_numpy(made["t10k"][0]))
    assert torch.equal(test.labels, torch.from_numpy(made["t10k"][1].astype(np.int64)))
    sub, _ = load_mnist(tmp_path, download=False, train_subset=2)
    assert torch.equal(sub.images, train.images[:2])
    # the trainer's interface: seeded order, pixels in [0, 1], augmentation generator ignored
    x, y = next(train.batches(5, torch.Generator().manual_seed(1), torch.Generator()))
    order = torch.randperm(5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x, train.images[order].float() / 255) and torch.equal(y, train.labels[order])


one = np.zeros((1, 28, 28), np.uint8)
CORRUPT = {
    "wrong image magic": ({"images": idx_images(np.zeros((5, 28, 28)), magic=2049)}, "magic number 2049"),
    "wrong label magic": ({"labels": idx_labels([1] * 5, magic=2051)}, "magic number 2051"),
    "truncated images": ({"images": idx_images(np.zeros((5, 28, 28)))[:-1]}, "truncated or corrupt"),
    "count above the data": ({"images": idx_images(np.zeros((5, 28, 28)), count=6)}, "says 6 records"),
    "extra bytes": ({"labels": idx_labels([1] * 5) + b"\0"}, "says 5 records"),
    "not 28x28": ({"images": idx_images(np.zeros((5, 27, 28)), rows=27)}, "27x28"),
    "label above 9": ({"labels": idx_labels([1, 2, 10, 3, 4])}, "label 10"),
    "images and labels disagree": ({"labels": idx_labels([1] * 4)}, "5 images but"),
    "header cut": ({"labels": b"\0\0\x08"}, "shorter than its IDX header"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_idx_is_refused_whatever_the_subset(tmp_path, case, gz):
    files, message = CORRUPT[case]
    write_mnist(tmp_path, train=files, gz=("train", "test") if gz else ())
    for subset in (0, 1):
        with pytest.raises(UserError, match=re.escape(message)):
            load_mnist(tmp_path, download=False, train_subset=subset, test_subset=subset)


def test_broken_gzip_and_missing_files(tmp_path):
    write_mnist(tmp_path, gz=("train", "test"))
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])  # cut off the gzip trailer and some data
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_mnist(tmp_path, download=False)
    path.unlink()
    with pytest.raises(UserError, match="not found.*--no-download"):
        load_mnist(tmp_path, download=False)


def test_the_slice_matches_an_independent_parse(mnist_dir):
    train, test = load_mnist(mnist_dir, download=False)
    assert (len(train), len(test)) == (17_435, 10_000)
    raw = mnist_dir / "MNIST" / "raw"
    for split, part in ((train, "train"), (test, "t10k")):
        with gzip.open(raw / f"{part}-images-idx3-ubyte.gz") as f:
            magic, n, rows, cols = struct.unpack(">4i", f.read(16))
            pixels = np.frombuffer(f.read(), np.uint8)
        with gzip.open(raw / f"{part}-labels-idx1-ubyte.gz") as f:
            magic_l, n_l = struct.unpack(">2i", f.read(8))
            labels = np.frombuffer(f.read(), np.uint8)
        assert (magic, magic_l, rows, cols, n) == (2051, 2049, 28, 28, n_l) and n == len(split)
        assert torch.equal(split.images.flatten(), torch.from_numpy(pixels.copy()))
        assert torch.equal(split.labels, torch.from_numpy(labels.astype(np.int64)))
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the official first five


def test_truncated_slice_copy_exits_2(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for p in (mnist_dir / "MNIST" / "raw").iterdir():
        raw.joinpath(p.name).write_bytes(p.read_bytes())
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-7]))
    proc = run_script("ticket_transfer.py", "--data-dir", tmp_path, "--no-download", "--device", "cpu",
                      "--train-subset", 64, "--test-subset", 64, "--epochs", 1, "--rounds", 1,
                      "--checkpoint-dir", tmp_path / "c", "--results-dir", tmp_path / "r", check=False)
    assert_user_error(proc, "t10k-labels-idx1-ubyte.gz", "truncated or corrupt")


@pytest.mark.parametrize("flags, words", [
    (["--prune-rate", "1.5"], ["--prune-rate", "(0, 1)"]),
    (["--prune-rate", "0"], ["--prune-rate"]),
    (["--rounds", "0"], ["--rounds must be >= 1"]),
    (["--experiments", "colours"], ["--experiments", "colours"]),
    (["--archs", "resnet20"], ["--archs", "resnet20"]),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, flags, words):
    proc = run_script("ticket_transfer.py", "--data-dir", tmp_path / "nowhere", "--no-download",
                      "--results-dir", tmp_path / "r", *flags, check=False)
    assert_user_error(proc, *words)


# ---------------------------------------------------------------------------------------------
# The LeNets

def test_lenet_parameter_counts_outputs_and_init():
    for arch, params, layers in [("lenet300", 266_610, ["fc1", "fc2", "fc3"]),
                                 ("lenet5", 61_706, ["conv1", "conv2", "fc1", "fc2", "fc3"])]:
        model = get_model(arch, num_classes=10, dataset="mnist")
        assert count_params(model) == params
        assert model(torch.rand(7, 1, 28, 28)).shape == (7, 10)
        assert get_model(arch, num_classes=5)(torch.rand(3, 1, 28, 28)).shape == (3, 5)
        assert list(prunable_weights(model)) == [f"{n}.weight" for n in layers]
        assert output_layer(model) == "fc3.weight"
        assert all("normalize" not in n for n, _ in model.named_parameters())
        for name in layers:
            m = getattr(model, name)
            assert torch.count_nonzero(m.bias) == 0  # biases zero
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel() if m.weight.dim() == 4 else m.weight.shape[0]
            glorot = math.sqrt(2 / (fan_in + fan_out))
            if m.weight.numel() > 1000:  # Gaussian Glorot: the std within a few % of the formula
                assert abs(m.weight.std().item() / glorot - 1) < 0.06, (arch, name)
    with pytest.raises(UserError, match="made for mnist"):
        get_model("lenet5", dataset="cifar10")


@pytest.mark.parametrize("arch, classes", [("lenet300", 5), ("lenet5", 10)])
def test_load_checkpoint_rebuilds_lenets(tmp_path, arch, classes):
    model = seeded(lambda: get_model(arch, num_classes=classes), 3)
    save_torch(checkpoint(model, arch, 0, {"num_classes": classes}, num_classes=classes), tmp_path / "m.pt")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(4, 1, 28, 28)
    assert ckpt["arch"] == arch and torch.equal(loaded.eval()(x), model.eval()(x))
    assert loaded(x).shape == (4, classes)


# ---------------------------------------------------------------------------------------------
# The schedule

def test_per_layer_schedule_is_exact_and_nested():
    model = get_model("lenet300")
    assert kept_after(235_200, 0.3, 1) == 164_640 and kept_after(300, 0.5, 1) == 150
    assert kept_after(100, 0.5, 3) == 13  # 12.5 rounds up
    assert kept_after(1000, 0.15, 2) == 722  # float64 as written: 1000·0.85² = 722.4999…
    counts = {r: round_keep_counts(model, 0.3, r) for r in range(6)}
    for r, c in counts.items():
        assert c["fc1.weight"] == math.floor(235_200 * 0.7 ** r + 0.5)
        assert c["fc2.weight"] == math.floor(30_000 * 0.7 ** r + 0.5)
        assert c["fc3.weight"] == math.floor(1_000 * 0.85 ** r + 0.5)  # output layer at p/2
    lenet5 = round_keep_counts(get_model("lenet5"), 0.2, 3)
    assert lenet5["conv1.weight"] == math.floor(150 * 0.8 ** 3 + 0.5)  # convolutions at p
    assert lenet5["fc3.weight"] == math.floor(840 * 0.9 ** 3 + 0.5)

    gen = torch.Generator().manual_seed(0)
    mask = {n: torch.ones_like(w) for n, w in prunable_weights(model).items()}
    for r in range(1, 6):
        trained = {n: torch.randn(w.shape, generator=gen) for n, w in prunable_weights(model).items()}
        new = imp_mask(trained, mask, counts[r])
        for n, m in new.items():
            assert int(m.sum()) == counts[r][n]
            assert torch.all(m <= mask[n])  # nested: nothing comes back
            kept, dropped = trained[n].abs()[m == 1], trained[n].abs()[(m == 0) & (mask[n] == 1)]
            assert kept.min() >= dropped.max()  # the largest |w| among the survivors stay
        mask = new


def test_adam_and_sgd_and_adam_resume(tmp_path, capsys):
    """optimizer= builds Adam or the project's SGD; an interrupted Adam run resumes (its state
    too) and ends with the uninterrupted run's exact weights."""
    gen = torch.Generator().manual_seed(0)
    from data import MnistSplit
    train = MnistSplit(torch.randint(0, 256, (96, 1, 28, 28), generator=gen, dtype=torch.uint8),
                       torch.randint(0, 10, (96,), generator=gen))
    test = MnistSplit(train.images[:32], train.labels[:32])
    hp = TrainConfig(epochs=3, batch_size=16, lr=0.0012, momentum=0.9, weight_decay=0.0, milestones=(),
                     precision="fp32")
    model = get_model("lenet300")
    adam, sgd = optimizer_factory("adam")(model, hp), optimizer_factory("sgd")(model, hp)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 0.0012
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 0.0

    def run(name, opt, interrupt_at=None):
        calls = []

        def probe(model):
            calls.append(1)
            if interrupt_at is not None and len(calls) == interrupt_at + 1:
                raise KeyboardInterrupt
            return {}
        model = seeded(lambda: get_model("lenet300"), 0)
        kw = dict(arch="lenet300", config={"optimizer": opt}, ckpt_dir=tmp_path / name / "c",
                  results_dir=tmp_path / name / "r", seed=0, extra_metrics=probe,
                  optimizer=optimizer_factory(opt), save_as=[(3, "final.pt")])
        train_run(model, train, test, hp, **kw)
        return model

    final = {o: run(o, o).state_dict() for o in ("adam", "sgd")}
    assert not torch.equal(final["adam"]["fc1.weight"], final["sgd"]["fc1.weight"])
    with pytest.raises(KeyboardInterrupt):
        run("cut", "adam", interrupt_at=2)  # dies while logging epoch 2: resume.pt holds epoch 1
    assert (tmp_path / "cut" / "c" / "resume.pt").is_file()
    capsys.readouterr()
    resumed = run("cut", "adam").state_dict()
    assert "resuming after epoch 1" in capsys.readouterr().err
    assert all(torch.equal(resumed[k], final["adam"][k]) for k in resumed)
    rows = load_csv(tmp_path / "cut" / "r" / "trajectory.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# The script end to end on the MNIST slice

SIDES = {"imp": ["full"], "data": ["half1", "half2"], "labels": ["digits0to4", "digits5to9"],
         "optimizer": ["adam", "sgd"]}


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("ticket_transfer")
    args = ["--data-dir", mnist_dir, "--no-download", "--device", "cpu", "--train-subset", 512,
            "--test-subset", 256, "--epochs", 1, "--rounds", 2, "--controls", "random", "reinit",
            "--checkpoint-dir", root / "checkpoints", "--results-dir", root / "results"]
    proc = run_script("ticket_transfer.py", *args)
    return {"root": root, "ckpt": root / "checkpoints" / "ticket_transfer",
            "res": root / "results" / "ticket_transfer", "args": args, "proc": proc}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_summary_and_trajectories(transfer_run):
    rows = load_csv(transfer_run["res"] / "summary.csv")
    assert list(rows[0]) == SUMMARY_COLUMNS
    # per (experiment, arch): 3 own rounds per side; per round >= 1: transferred, random, reinit
    expected = {("imp", "lenet300"): 3 + 2 * 2, ("imp", "lenet5"): 3 + 2 * 2}
    expected.update({(e, "lenet300"): 2 * (3 + 3 * 2) for e in ("data", "labels", "optimizer")})
    got = {}
    for r in rows:
        got[(r["experiment"], r["arch"])] = got.get((r["experiment"], r["arch"]), 0) + 1
    assert got == expected
    for r in rows:
        folder = (transfer_run["res"] / r["experiment"] / r["arch"] /
                  f"{r['ticket']}_{r['mask_from']}_on_{r['trained_on']}" / f"round_{int(r['round']):02d}")
        traj = load_csv(folder / "trajectory.csv")
        assert float(r["ticket_acc"]) == pytest.approx(float(traj[0]["test_acc"]), abs=1e-4)
        assert float(r["final_acc"]) == pytest.approx(float(traj[-1]["test_acc"]), abs=1e-4)
        dense = [x for x in rows if (x["experiment"], x["arch"], x["trained_on"], x["round"]) ==
                 (r["experiment"], r["arch"], r["trained_on"], "0")][0]
        assert r["dense_acc"] == dense["final_acc"]
        mask = load(transfer_run["ckpt"] / folder.relative_to(transfer_run["res"]) / "mask.pt")
        kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        assert float(r["density"]) == pytest.approx(kept, abs=1e-6)
        if r["round"] == "0":
            assert r["ticket"] == "imp" and float(r["density"]) == 1.0


def test_masks_counts_nesting_starts_and_transfer(transfer_run):
    ckpt = transfer_run["ckpt"]
    for experiment, sides in SIDES.items():
        for arch in (["lenet300", "lenet5"] if experiment == "imp" else ["lenet300"]):
            base = ckpt / experiment / arch
            init = load(base / "init.pt")
            rate = {"imp": {"lenet300": 0.3, "lenet5": 0.2}[arch], "data": 0.5, "labels": 0.35,
                    "optimizer": 0.5}[experiment]
            for side in sides:
                prev = None
                for r in range(3):
                    own = base / f"imp_{side}_on_{side}" / f"round_{r:02d}"
                    mask = load(own / "mask.pt")
                    out_name = "fc3.weight"
                    for n, m in mask.items():
                        p = rate / 2 if n == out_name else rate
                        assert int(m.sum()) == math.floor(m.numel() * (1 - p) ** r + 0.5), (experiment, n, r)
                        if prev is not None:
                            assert torch.all(m <= prev[n])
                    prev = mask
                    start, final = load(own / "start.pt"), load(own / "final.pt")
                    for n, m in mask.items():
                        assert torch.equal(start["model"][n], init["model"][n] * m)  # init x mask
                        assert torch.all(final["model"][n][m == 0] == 0)  # zeros kept
                    if r == 0:
                        continue
                    for other in sides:
                        if other == side:
                            continue
                        moved = base / f"imp_{other}_on_{side}" / f"round_{r:02d}"
                        source = load(base / f"imp_{other}_on_{other}" / f"round_{r:02d}" / "mask.pt")
                        got = load(moved / "mask.pt")
                        assert all(torch.equal(got[n], source[n]) for n in source)  # bitwise
                        start = load(moved / "start.pt")
                        assert all(torch.equal(start["model"][n], init["model"][n] * source[n]) for n in source)
                    rnd = base / f"random_{side}_on_{side}" / f"round_{r:02d}"
                    rmask = load(rnd / "mask.pt")
                    assert all(int(rmask[n].sum()) == int(mask[n].sum()) for n in mask)
                    assert not all(torch.equal(rmask[n], mask[n]) for n in mask)
                    rstart = load(rnd / "start.pt")
                    assert all(torch.equal(rstart["model"][n], init["model"][n] * rmask[n]) for n in mask)
                    reinit = load(base / f"reinit_{side}_on_{side}" / f"round_{r:02d}" / "start.pt")
                    assert not torch.equal(reinit["model"]["fc1.weight"], start["model"]["fc1.weight"])
                    assert torch.all(reinit["model"]["fc1.weight"][mask["fc1.weight"] == 0] == 0)


def test_splits_and_label_outputs(transfer_run):
    res, ckpt = transfer_run["res"], transfer_run["ckpt"]
    halves = json.loads((res / "data" / "splits.json").read_text())
    a, b = set(halves["half1"]), set(halves["half2"])
    assert not a & b and a | b == set(range(512)) and abs(len(a) - len(b)) <= 1
    assert halves["test"]["half1"] == halves["test"]["half2"] == list(range(256))
    train, test = load_mnist(transfer_run["args"][1], download=False, train_subset=512, test_subset=256)
    digits = json.loads((res / "labels" / "splits.json").read_text())
    for side, allowed in (("digits0to4", set(range(5))), ("digits5to9", set(range(5, 10)))):
        assert {int(train.labels[i]) for i in digits[side]} == allowed
        assert {int(test.labels[i]) for i in digits["test"][side]} == allowed
        assert len(digits[side]) == sum(int(y) in allowed for y in train.labels)  # all of them
    assert json.loads((res / "imp" / "splits.json").read_text())["full"] == list(range(512))
    model, saved = load_checkpoint(ckpt / "labels" / "lenet300" / "imp_digits5to9_on_digits0to4" / "round_02" / "final.pt")
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 5) and saved["num_classes"] == 5
    # each label split is tested on its own digits: its test set size is in the run's settings
    summary = json.loads((res / "labels" / "lenet300" / "imp_digits0to4_on_digits5to9" / "round_01"
                          / "summary.json").read_text())
    assert summary["config"]["test_images"] == len(digits["test"]["digits5to9"])
    assert summary["config"]["trained_on"] == "digits5to9"


def test_adam_vs_sgd_sides_and_constant_lr(transfer_run):
    res, ckpt = transfer_run["res"], transfer_run["ckpt"]
    configs = {}
    for side in ("adam", "sgd"):
        s = json.loads((res / "optimizer" / "lenet300" / f"imp_{side}_on_{side}" / "round_00" / "summary.json").read_text())
        configs[side] = s["config"]
        assert s["config"]["optimizer"] == side and "optimizer" not in TrainConfig.__dataclass_fields__
        assert s["config"]["lr"] == 0.0012 and s["config"]["weight_decay"] == 0.0
        assert s["config"]["milestones"] == [] and s["config"]["batch_size"] == 50
    moved = json.loads((res / "optimizer" / "lenet300" / "imp_adam_on_sgd" / "round_01" / "summary.json").read_text())
    assert moved["config"]["optimizer"] == "sgd" and moved["config"]["mask_from"] == "adam"
    starts = [load(ckpt / "optimizer" / "lenet300" / f"imp_{s}_on_{s}" / "round_00" / "start.pt") for s in ("adam", "sgd")]
    finals = [load(ckpt / "optimizer" / "lenet300" / f"imp_{s}_on_{s}" / "round_00" / "final.pt") for s in ("adam", "sgd")]
    assert torch.equal(starts[0]["model"]["fc1.weight"], starts[1]["model"]["fc1.weight"])  # one init
    assert not torch.equal(finals[0]["model"]["fc1.weight"], finals[1]["model"]["fc1.weight"])
    imp_cfg = json.loads((res / "imp" / "lenet300" / "imp_full_on_full" / "round_00" / "summary.json").read_text())["config"]
    assert imp_cfg["optimizer"] == "adam" and imp_cfg["batch_size"] == 60 and imp_cfg["prune_rate"] == 0.3


def test_rerun_skips_finished_work_and_redoes_a_lost_final(transfer_run):
    before = (transfer_run["res"] / "summary.csv").read_text()
    # round 1's own ticket lost its final.pt (round 2's mask comes from it): that run alone is redone
    lost = transfer_run["ckpt"] / "data" / "lenet300" / "imp_half1_on_half1" / "round_01" / "final.pt"
    weights = load(lost)
    lost.unlink()
    proc = run_script("ticket_transfer.py", *transfer_run["args"][:-4], "--experiments", "data",
                      *transfer_run["args"][-4:])
    assert proc.stderr.count("finished already") == 2 * (3 + 3 * 2) - 1
    assert "resuming" not in proc.stderr
    redone = load(lost)
    assert all(torch.equal(weights["model"][k], redone["model"][k]) for k in weights["model"])  # same seed
    assert (transfer_run["res"] / "summary.csv").read_text() == before  # other rows kept


# ---------------------------------------------------------------------------------------------
# Figures and the report section, from the end-to-end run's results

def test_figures_plot_the_summary(transfer_run):
    from utils.plots import Results
    from utils.plots.ticket_transfer import fig_imp_accuracy, fig_imp_trajectories, fig_transfer

    res = Results(transfer_run["root"] / "results")
    rows = load_csv(transfer_run["res"] / "summary.csv")

    def pick(experiment, arch, ticket, mask_from, trained_on):
        sel = [r for r in rows if (r["experiment"], r["arch"], r["ticket"], r["mask_from"], r["trained_on"])
               == (experiment, arch, ticket, mask_from, trained_on)]
        return sorted(sel, key=lambda r: int(r["round"]))

    def line(ax, prefix):
        hits = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
        assert len(hits) == 1, [ln.get_label() for ln in ax.get_lines()]
        return hits[0]

    fig = fig_imp_accuracy(res)
    assert [ax.get_title() for ax in fig.axes] == ["lenet300 on MNIST", "lenet5 on MNIST"]
    own = pick("imp", "lenet5", "imp", "full", "full")
    got = line(fig.axes[1], "own ticket")
    assert list(got.get_ydata()) == pytest.approx([float(r["final_acc"]) for r in own], abs=1e-4)
    assert list(got.get_xdata()) == pytest.approx([100 * float(r["density"]) for r in own], abs=1e-4)
    rnd = pick("imp", "lenet5", "random", "full", "full")
    assert list(line(fig.axes[1], "control: random").get_ydata())[1:] == \
        pytest.approx([float(r["final_acc"]) for r in rnd], abs=1e-4)

    fig = fig_transfer(res)
    titled = {ax.get_title().split(":")[0] + ":" + ax.get_title().split("trained on ")[1].split(",")[0]: ax
              for ax in fig.axes if "trained on " in ax.get_title()}
    assert len(titled) == 6
    gaps = [ax for ax in fig.axes if ax.get_title().endswith("transferred - own at the same round")]
    assert len(gaps) == 3  # one per transfer experiment
    ax = titled["data / lenet300:half2"]
    moved = pick("data", "lenet300", "imp", "half1", "half2")
    dense = pick("data", "lenet300", "imp", "half2", "half2")[0]
    assert list(line(ax, "transferred").get_ydata()) == \
        pytest.approx([float(dense["final_acc"])] + [float(r["final_acc"]) for r in moved], abs=1e-4)

    fig = fig_imp_trajectories(res)
    lines = fig.axes[0].get_lines()
    # lenet300 at rate 0.3 keeps 100, 70, 49% after rounds 0-2: round 1 is nearest to no target
    assert [ln.get_label().split("(")[1] for ln in lines] == ["round 0)", "round 2)"]
    assert list(lines[0].get_xdata()) == [0, math.ceil(512 / 60)]  # iterations: 1 epoch of batch 60


def test_report_section_numbers(transfer_run, tmp_path):
    from utils.analysis.ticket_transfer import section
    from utils.plots import Results
    from utils.document import Doc

    doc = Doc()
    section(doc, Results(transfer_run["root"] / "results"))
    rows = load_csv(transfer_run["res"] / "summary.csv")
    table = doc.tables["ticket_transfer_labels_lenet300_digits0to4"]
    assert table.columns == ["round", "% remaining", "own", "transferred", "random", "reinit", "transferred - own"]
    get = {(r["ticket"], r["mask_from"], int(r["round"])): float(r["final_acc"]) for r in rows
           if (r["experiment"], r["trained_on"]) == ("labels", "digits0to4")}
    for line in table.rows:
        rnd = int(line[0])
        assert line[2] == f"{get[('imp', 'digits0to4', rnd)]:.2f}"
        if rnd:
            diff = get[("imp", "digits5to9", rnd)] - get[("imp", "digits0to4", rnd)]
            assert line[3] == f"{get[('imp', 'digits5to9', rnd)]:.2f}" and line[6] == f"{diff:+.2f}"
            assert line[4] == f"{get[('random', 'digits0to4', rnd)]:.2f}"
    mean = sum(get[("imp", "digits5to9", r)] - get[("imp", "digits0to4", r)] for r in (1, 2)) / 2
    text = "\n".join(b for kind, x in doc.blocks if kind == "bullets" for b in x)
    # one seed: differences reported with "one seed", no verdict word (utils/noise.py)
    kept = {int(r["round"]): 100 * float(r["density"]) for r in rows
            if (r["experiment"], r["trained_on"], r["ticket"]) == ("labels", "digits0to4", "imp")}
    # every transfer sentence names the sparsity, and compares tickets at the same round
    assert (f"Transferred - own (both at the same round, so the same sparsity), averaged over rounds 1-2 "
            f"({kept[1]:.3g}%-{kept[2]:.3g}% of the weights remaining): Δ = {mean:+.2f} points, one seed" in text)
    vs_random = [get[("imp", "digits5to9", r)] - get[("random", "digits0to4", r)] for r in (1, 2)]
    assert (f"per round: Δ = {vs_random[0]:+.2f} at round 1 ({kept[1]:.3g}%), {vs_random[1]:+.2f} at round 2 "
            f"({kept[2]:.3g}%) (points, one seed"
            in text)
    # the whole pipeline: figures and report from the same results
    results = transfer_run["root"] / "results"
    proc = run_script("plot_results.py", "--results-dir", results, "--plots-dir", tmp_path / "plots")
    for name in ("ticket_imp_accuracy", "ticket_imp_trajectories", "ticket_transfer"):
        assert (tmp_path / "plots" / f"{name}.png").is_file(), proc.stdout
    run_script("make_report.py", "--results-dir", results, "--no-zip")
    md = (results / "report.md").read_text()
    assert "Table (ticket_transfer_data_lenet300_half1)" in md and "Figure: plots/ticket_transfer.png" in md


def test_docs_page_names_every_flag():
    page = (REPO / "docs" / "ticket_transfer.md").read_text()
    help_text = subprocess.run([sys.executable, str(REPO / "ticket_transfer.py"), "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    flags = set(re.findall(r"--[a-z][a-z-]+", help_text))
    assert flags and not [f for f in flags if f"`{f}" not in page]


def test_download_is_md5_checked_and_atomic(tmp_path, monkeypatch):
    import hashlib

    import torchvision.datasets.utils as tv

    import data

    made = write_mnist(tmp_path / "src", gz=("train", "test"))
    blobs = {p.name: p.read_bytes() for p in (tmp_path / "src" / "MNIST" / "raw").iterdir()}
    files = {k: (stem, hashlib.md5(blobs[stem + ".gz"]).hexdigest()) for k, (stem, _) in data.MNIST_FILES.items()}
    monkeypatch.setattr(data, "MNIST_FILES", files)
    served = []

    def fake_download(url, root, filename, md5=None):  # what the mirror serves
        served.append(filename)
        blob = blobs[filename]
        bad = corrupt and "t10k-labels" in filename
        (Path(root) / filename).write_bytes(blob[:-3] if bad else blob)

    corrupt = True
    monkeypatch.setattr(tv, "download_url", fake_download)
    with pytest.raises(UserError, match="could not download t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path / "dl")
    raw = tmp_path / "dl" / "MNIST" / "raw"
    # the three good files arrived whole; the bad one left nothing behind, not even a temporary
    assert sorted(p.name for p in raw.iterdir()) == sorted(n for n in blobs if "t10k-labels" not in n)
    corrupt = False
    train, test = load_mnist(tmp_path / "dl")
    assert served.count("t10k-labels-idx1-ubyte.gz") == 2 and len(served) == 5  # only the missing one again
    assert torch.equal(test.labels, torch.from_numpy(made["t10k"][1].astype(np.int64)))
    assert len(train) == 5


def test_label_split_at_the_reports_sparsity(tmp_path, mnist_dir):
    """--experiments labels --rounds 15 (the report's schedule, on a small subset): a row per round
    and side for the own, transferred and random tickets; the figure's label-split panels plot them
    against % of weights remaining; the report compares the sides at round 15 and names its sparsity."""
    from utils.analysis.ticket_transfer import claims, section
    from utils.document import Doc
    from utils.plots import Results
    from utils.plots.ticket_transfer import fig_transfer

    run_script("ticket_transfer.py", "--data-dir", mnist_dir, "--no-download", "--device", "cpu", "--train-subset", 120,
               "--test-subset", 60, "--epochs", 1, "--batch-size", 60, "--experiments", "labels", "--rounds", 15,
               "--checkpoint-dir", tmp_path / "checkpoints", "--results-dir", tmp_path / "results")
    rows = load_csv(tmp_path / "results" / "ticket_transfer" / "summary.csv")
    have = {(r["trained_on"], r["ticket"], r["mask_from"], int(r["round"])) for r in rows}
    for side, other in (("digits0to4", "digits5to9"), ("digits5to9", "digits0to4")):
        assert (side, "imp", side, 0) in have
        for rnd in range(1, 16):
            assert {(side, "imp", side, rnd), (side, "imp", other, rnd), (side, "random", side, rnd)} <= have
    assert len(rows) == 2 * (16 + 15 + 15)
    # round 15 at rate 0.35, output layer at 0.175: 784*300, 300*100 at 0.65^15, 100*5 at 0.825^15
    kept = (round(784 * 300 * 0.65 ** 15) + round(300 * 100 * 0.65 ** 15) + round(500 * 0.825 ** 15)) / 265700
    last = [r for r in rows if int(r["round"]) == 15]
    assert all(float(r["density"]) == pytest.approx(kept, abs=1e-9) for r in last)

    res = Results(tmp_path / "results")
    fig = fig_transfer(res)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title().startswith("labels")}
    ax = panels["labels / lenet300: trained on digits5to9, masks from digits5to9 and digits0to4"]
    assert ax.get_xlabel() == "% of weights remaining (log)" and ax.get_xscale() == "log"
    moved = sorted((r for r in rows if (r["trained_on"], r["mask_from"], r["ticket"]) ==
                    ("digits5to9", "digits0to4", "imp")), key=lambda r: int(r["round"]))
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("transferred"))
    assert list(line.get_xdata())[1:] == pytest.approx([100 * float(r["density"]) for r in moved], abs=1e-6)
    assert list(line.get_ydata())[1:] == pytest.approx([float(r["final_acc"]) for r in moved], abs=1e-4)
    gap = panels["labels / lenet300: transferred - own at the same round"]
    own = {int(r["round"]): float(r["final_acc"]) for r in rows
           if (r["trained_on"], r["mask_from"], r["ticket"]) == ("digits5to9", "digits5to9", "imp")}
    line = next(ln for ln in gap.get_lines() if ln.get_label().startswith("trained on digits5to9"))
    assert list(line.get_ydata()) == pytest.approx([float(r["final_acc"]) - own[int(r["round"])] for r in moved],
                                                   abs=1e-4)

    doc = Doc()
    section(doc, res)
    text = "\n".join(x for kind, x in doc.blocks if kind == "p")
    assert f"Both sides at the same round, 15 ({100 * kept:.3g}% of the weights remaining), lenet300:" in text
    labels = next(c for c in claims(res) if c.claim.startswith("The digits 0-4 ticket"))
    assert f"round 15 ({100 * kept:.3g}% of the weights remaining)" in labels.measured
    assert labels.verdict == "not testable at this scale"  # one seed
    assert doc.tables["verdict_ticket_transfer"].rows
