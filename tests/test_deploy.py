"""deploy.py and export.py: every leaderboard network measured in each deployable form, on a tiny
hand-made tree (the tiny dense run, a 90% magnitude mask of it, a 50% channel-pruned compact net);
the sparse kernels and the peak-memory count checked against their definitions on hand-made
inputs; every exported file reloaded by plain torch in a process that cannot import this repo.

Timings are never asserted here (the machine is shared): speed targets are bench/deploy.py's."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import deploy
from conftest import TINY_DATA, run_script
from data import load_cifar10, to_pixels
from models import load_checkpoint, prunable_weights
from utils.channels import block_gammas, compact_model, count_flops, select_channels
from utils.deploy import (SparseConv2d, SparseLinear, masked_network, peak_forward_bytes, semi_structured_network,
                          two_four_mask)
from utils.io import load_csv
from utils.leaderboard import Leaderboard
from utils.plots.common import Results
from utils.pruning import global_magnitude_mask

TOLERANCE = 1e-4  # |logit| difference a reloaded form may show: float32 rounding of a different kernel


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def tree(tiny_dense, tmp_path_factory):
    """A copy of the tiny dense run plus one masked (90%) and one compact (50% channels) network,
    with the results rows the leaderboard reads them from."""
    root = tmp_path_factory.mktemp("deploy_tree")
    ck, res = root / "checkpoints", root / "results"
    model, dense_ckpt = load_checkpoint(tiny_dense["run"] / "epoch_003.pt")
    (ck / "dense").mkdir(parents=True)
    torch.save(dense_ckpt, ck / "dense" / "epoch_003.pt")
    _write(res / "dense" / "summary.json", (tiny_dense["results"] / "dense" / "summary.json").read_text())

    mask = global_magnitude_mask(prunable_weights(model), 0.9)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for n, m in mask.items():
        state[n] *= m
    torch.save({**dense_ckpt, "model": state, "mask": mask}, _dir(ck / "magnitude" / "sparsity_90") / "final.pt")
    _write(res / "magnitude" / "summary.csv", "sparsity,dense_acc,pruned_acc,retrained_acc\n0.9,20.0,10.0,15.0\n")
    _write(res / "magnitude" / "sparsity_90" / "summary.json", json.dumps({"test_acc": 15.0, "epochs": 1}))

    compact = compact_model(model, select_channels(block_gammas(model), 0.5).keep)
    torch.save({**dense_ckpt, "model": compact.state_dict(), "widths": compact.widths},
               _dir(ck / "early_bird" / "epoch_002" / "ratio_50") / "final.pt")
    params = sum(p.numel() for p in compact.parameters())
    _write(res / "early_bird" / "summary.csv", "ticket_epoch,ratio,dense_acc,pruned_acc,retrained_acc,params,flops,"
           f"dense_params\n2,0.5,20.0,10.0,14.0,{params},{count_flops(compact)},"
           f"{sum(p.numel() for p in model.parameters())}\n")
    _write(res / "early_bird" / "epoch_002" / "ratio_50" / "summary.json", json.dumps({"test_acc": 14.0, "epochs": 1}))
    return {"ck": ck, "res": res, "model": model}


def _dir(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def _deploy(tree, *extra):
    return run_script("deploy.py", *TINY_DATA, "--test-subset", 64, "--checkpoint-dir", tree["ck"],
                      "--results-dir", tree["res"], "--repeats", 1, "--warmup", 0, *extra)


def _stamps(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_every_leaderboard_network_is_measured_and_a_rerun_writes_nothing(tree):
    _deploy(tree)
    rows = load_csv(tree["res"] / "deploy" / "summary.csv")
    entries = Leaderboard(Results(tree["res"])).entries
    assert len(entries) == 3
    by = {(r["source"], r["form"]): r for r in rows}
    for e in entries:  # every leaderboard row: latency at 1 and 128, peak memory and disk
        timed = [r for r in rows if r["source"] == e.run_summary and r["latency_ms_b128"]]
        assert timed, e.method
        for r in timed:
            assert float(r["latency_ms_b1"]) > 0 and float(r["latency_ms_b128"]) > 0
            assert float(r["peak_mem_mb"]) > 0 and float(r["disk_mb"]) > 0
            assert float(r["max_abs_logit_diff"]) <= TOLERANCE, r
            assert r["device"] == "cpu" and int(r["repeats"]) == 1 and int(r["threads"]) >= 1
    dense = by[("dense/summary.json", "dense")]
    compact = by[("early_bird/epoch_002/ratio_50/summary.json", "compact")]
    zeros = by[("magnitude/sparsity_90/summary.json", "dense_zeros")]
    csr = by[("magnitude/sparsity_90/summary.json", "sparse_csr")]
    assert float(compact["disk_mb"]) < float(dense["disk_mb"])
    assert float(zeros["disk_mb"]) == pytest.approx(float(dense["disk_mb"]), rel=0.01)  # zeros take room
    assert float(csr["disk_mb"]) <= float(dense["disk_mb"]) / 3  # 10% kept, 8 bytes each in CSR
    assert not csr["latency_ms_b128"] and "densified" in csr["note"]
    assert float(by[("magnitude/sparsity_90/summary.json", "sparse_mm")]["latency_ms_b128"]) > 0
    assert "unavailable" in by[("dense/summary.json", "semi_structured_24")]["note"]  # no CUDA here
    # FLOPs count nonzero weights: per layer 2 x output positions x weights kept
    assert float(zeros["flops"]) / float(zeros["dense_flops"]) == pytest.approx(_kept_flops(tree), rel=1e-4)
    # peak memory at batch 128 from its definition: the stem conv's and its BatchNorm's outputs
    # (128 x 16 x 32 x 32 float32, 8 MiB each) are alive at once, beside the input (1.5 MiB)
    assert 17.5 < float(dense["peak_mem_mb"]) < 128 and float(dense["peak_mem_mb_b1"]) < 2

    stamps = _stamps(tree["res"])
    again = _deploy(tree)
    assert "0 networks measured, 3 already measured" in again.stdout
    assert _stamps(tree["res"]) == stamps
    # an interrupted run resumes: a network without its summary.json is measured again, alone
    compact_json = tree["res"] / "deploy" / "early_bird" / "epoch_002" / "ratio_50" / "summary.json"
    compact_json.unlink()
    third = _deploy(tree)
    assert "1 networks measured, 2 already measured" in third.stdout
    after = _stamps(tree["res"])
    # (and the table, holding its new timings)
    assert {p for p in after if after[p] != stamps.get(p)} == {compact_json, tree["res"] / "deploy" / "summary.csv"}


def _kept_flops(tree):
    """The 90% mask's FLOPs fraction from the definition: Σ 2·positions·kept / Σ 2·positions·weights."""
    ckpt = torch.load(tree["ck"] / "magnitude" / "sparsity_90" / "final.pt", weights_only=False)
    model, positions = tree["model"], {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: positions.__setitem__(n, o[0, 0].numel()))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    kept = sum(positions[n.rsplit(".", 1)[0]] * float(m.sum()) for n, m in ckpt["mask"].items())
    return kept / sum(positions[n.rsplit(".", 1)[0]] * m.numel() for n, m in ckpt["mask"].items())


def test_the_report_section_reads_the_measurements(tree):
    """After the first test's deploy.py run: one table row per network and form, the leaderboard's
    table gains the measured columns, and one timed pass is shown but never called faster."""
    if not (tree["res"] / "deploy" / "summary.csv").is_file():
        _deploy(tree)
    from utils.analysis import deploy as deployed, leaderboard
    from utils.document import Doc
    res = Results(tree["res"])
    doc = Doc()
    deployed.section(doc, res)
    rows = doc.tables["deploy"].rows
    # dense; compact; dense_zeros + sparse_mm + sparse_csr (disk only)
    assert [(r[0].split(",")[0], r[3]) for r in rows] == [
        ("dense (no pruning)", "dense"), ("Early-Bird", "compact"), ("magnitude + fine-tuning (Task 2)", "dense_zeros"),
        ("magnitude + fine-tuning (Task 2)", "sparse_mm"), ("magnitude + fine-tuning (Task 2)", "sparse_csr")]
    assert all("not called" in r[7] for r in rows[1:4])
    text = " ".join(b[1] for b in doc.blocks if b[0] == "p")
    assert "Faster than the dense network at batch 128 (beyond the timing margin): none." in text
    assert "(compact): 0.5" in text or "(compact): 0.6" in text  # the compact network's file, × dense
    doc = Doc()
    leaderboard.section(doc, res)
    table = doc.tables["leaderboard"]
    assert table.columns[-3:] == ["CPU ms b128 (fastest form)", "peak MB", "disk MB (smallest form)"]
    assert all(r[-1] != "n/a" for r in table.rows)


def test_a_missing_checkpoint_is_a_one_line_error(tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        deploy.main([*map(str, TINY_DATA), "--checkpoint-dir", str(tmp_path / "none"),
                     "--results-dir", str(tree["res"]), "--force"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "not found" in err, err


def test_sparse_kernels_compute_the_dense_layers():
    gen = torch.Generator().manual_seed(0)
    for stride, padding, k in ((1, 1, 3), (2, 1, 3), (2, 0, 1)):
        conv = nn.Conv2d(6, 10, k, stride, padding, bias=True)
        with torch.no_grad():
            conv.weight.mul_((torch.rand(conv.weight.shape, generator=gen) > 0.8).float())
        x = torch.rand(3, 6, 9, 9, generator=gen)
        sparse = SparseConv2d(conv, conv.weight.detach().reshape(10, -1).to_sparse_csr())
        with torch.no_grad():
            assert torch.allclose(sparse(x), F.conv2d(x, conv.weight, conv.bias, stride, padding), atol=1e-5)
    linear = nn.Linear(7, 4)
    x = torch.rand(5, 7, generator=gen)
    with torch.no_grad():
        assert torch.allclose(SparseLinear(linear, linear.weight.detach().to_sparse_csr())(x), linear(x), atol=1e-6)


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 0.0, -4.0, 1.0]])
    assert two_four_mask(w).tolist() == [[False, True, True, False, True, False, True, False]]
    # ties: the earlier position wins
    assert two_four_mask(torch.ones(1, 4)).tolist() == [[True, True, False, False]]


def test_two_four_network_computes_its_masked_reference():
    """The 2:4 form's plumbing (padding, unfold, reshapes) on the CPU, the semi-structured
    conversion replaced by the dense matrix itself (the kernel needs a CUDA GPU of cc >= 8.0)."""
    from models import get_model
    torch.manual_seed(0)
    model = get_model("resnet20").eval()
    net, ref = semi_structured_network(model, torch.float32, to_sparse=lambda w: w)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-4)
    for name, w in prunable_weights(ref).items():  # 2 of every 4 consecutive inputs kept (27 = 6·4 + 3: padded)
        groups = w.reshape(w.shape[0], -1)
        groups = F.pad(groups, (0, -groups.shape[1] % 4)).reshape(-1, 4)
        assert int((groups != 0).sum(1).max()) <= 2, name
        assert float((w != 0).float().mean()) == pytest.approx(0.5, abs=0.05), name


def test_peak_forward_bytes_counts_weights_input_and_live_outputs():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.rand(4, 10)
    weights = (10 * 20 + 20 + 20 * 5 + 5) * 4
    # the first Linear's output (4 x 20 floats) and the ReLU's are alive together; then the
    # Linear's is freed before the last output (4 x 5) exists; the transposed weights are views
    assert peak_forward_bytes(net, x) == weights + 4 * 10 * 4 + 2 * 4 * 20 * 4


RELOAD = r"""
import sys, torch
sys.path.insert(0, ".")  # the export folder: cifar_resnet.py only
images = torch.load(sys.argv[1])
out = {}
for name in sys.argv[2:]:
    if name.endswith(".pt2"):
        net = torch.export.load(name).module()
    else:
        from cifar_resnet import CifarResNet
        f = torch.load(name, weights_only=True)
        a = f["model_args"]
        net = CifarResNet(int(a["arch"][len("resnet"):]), a["num_classes"], a["shortcut"], a["widths"]).eval()
        state = f["state_dict"] if f["format"] == "state_dict" else {
            **f["dense"], **{k: m.to_dense().reshape(f["shapes"][k]) for k, m in f["csr"].items()}}
        net.load_state_dict(state)
    with torch.no_grad():
        out[name] = net(images)
torch.save(out, "logits.pt")
"""


def test_exported_forms_reload_with_plain_torch_and_give_the_masked_logits(tree, data_dir, tmp_path):
    _, test = load_cifar10(data_dir, False, 1, 200)
    images = to_pixels(test.images).contiguous()
    torch.save(images, tmp_path / "images.pt")
    for run, files in (("magnitude/sparsity_90", ["dense_zeros.pt", "dense_zeros.pt2", "sparse_csr.pt"]),
                       ("early_bird/epoch_002/ratio_50", ["compact.pt", "compact.pt2"])):
        out = tmp_path / run.replace("/", "_")
        run_script("export.py", "--run", run, "--checkpoint-dir", tree["ck"], "--out", out)
        assert sorted(p.name for p in out.iterdir()) == sorted(files + ["cifar_resnet.py"])
        # -I: isolated, so neither this repo nor its packages can be imported, only torch
        subprocess.run([sys.executable, "-I", "-c", RELOAD, str(tmp_path / "images.pt"), *files], cwd=out,
                       check=True, capture_output=True)
        logits = torch.load(out / "logits.pt")
        ckpt = torch.load(tree["ck"] / run / "final.pt", weights_only=False)
        with torch.no_grad():
            expected = masked_network(ckpt)(images)
        for name in files:
            assert (logits[name] - expected).abs().max() <= TOLERANCE, (run, name)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "magnitude_sparsity_90").iterdir()}
    assert sizes["sparse_csr.pt"] <= sizes["dense_zeros.pt"] / 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (python -m pytest -m cuda on a machine with one)")
def test_on_a_gpu_every_form_is_measured_and_the_two_four_kernels_match(tree, data_dir):
    """On a GPU: the forms on CUDA, and the 2:4 form where the compute capability is >= 8.0, its fp16
    logits within 0.05 of the same 2:4-masked weights run densely (fp16 rounding on logits of ~10)."""
    from utils.deploy import measure_network
    _, test = load_cifar10(data_dir, False, 1, 64)
    images = to_pixels(test.images).contiguous()
    dense = torch.load(tree["ck"] / "dense" / "epoch_003.pt", weights_only=False)
    rows = {r["form"]: r for r in measure_network(dense, dense, images, "cuda", 2, 1, 1)}
    assert rows["dense"]["latency_ms_b128"] > 0 and rows["dense"]["max_abs_logit_diff"] <= TOLERANCE
    if torch.cuda.get_device_capability()[0] >= 8:
        two_four = rows["semi_structured_24"]
        assert two_four.get("latency_ms_b128", 0) > 0, two_four["note"]
        assert two_four["max_abs_logit_diff"] <= 0.05
    else:
        assert "unavailable" in rows["semi_structured_24"]["note"]
