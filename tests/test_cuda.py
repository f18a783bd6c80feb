"""The CUDA code paths (issue 23): CUDA graphs with masks, compiled against eager, resume with
--deterministic, --precision auto, true fp32 in the attacks and the three-regime metrics, and
every entry script's smoke settings on the GPU.

Run them on a machine with a GPU: `python -m pytest -m cuda`. Every test marked `cuda` is skipped,
with the reason, where PyTorch sees no GPU (conftest.py), so CI on a CPU stays green; the first
test here, unmarked, checks exactly that on any machine. bench/gpu_check.sh runs them with the
GPU figures; the smoke pipeline's test comes last (the slowest).
"""
import copy
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import train_dense
import utils.train
from conftest import REPO, run_script
from data import load_cifar10
from models import get_model, prunable_weights
from utils.attacks import eval_mode, input_gradient, robust_evaluate, strict_fp32
from utils.config import TrainConfig
from utils.io import load_csv, load_json
from utils.pruning import magnitude_mask_at_sparsity
from utils.three_regime import linear_cka, linear_path, softmax_outputs
from utils.train import Callback, autocast, resolve_precision, seeded, train_run

STEPS = ["train_dense", "prune_magnitude", "lottery_imp", "early_bird", "three_regime", "prune_at_init",
         "ticket_transfer", "earlycrop", "robustness", "deploy", "plot_results", "make_report"]


# --- on any machine: without a GPU the CUDA tests are skipped with their reason, never errors -----

def cuda_marked_tests():
    return sorted(name for name, fn in globals().items() if name.startswith("test_")
                  and any(m.name == "cuda" for m in getattr(fn, "pytestmark", [])))


def test_without_a_gpu_the_cuda_tests_are_skipped_with_their_reason(tmp_path):
    """`python -m pytest -m cuda` with no GPU visible (CUDA_VISIBLE_DEVICES="" hides any): every
    test marked `cuda` is reported skipped, with the reason, and the unmarked ones deselected."""
    xml = tmp_path / "cuda.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider",
                           f"--junitxml={xml}", str(Path(__file__))],
                          cwd=REPO, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = list(ET.parse(xml).getroot().iter("testcase"))
    marked = cuda_marked_tests()
    assert len(marked) >= 6
    assert sorted({c.get("name").split("[")[0] for c in cases}) == marked  # the rest deselected
    for case in cases:
        assert [child.tag for child in case if child.tag in ("failure", "error")] == [], case.get("name")
        skipped = case.find("skipped")
        assert skipped is not None, case.get("name")
        assert "needs a CUDA GPU" in skipped.get("message") and "python -m pytest -m cuda" in skipped.get("message")
    assert f"{len(cases)} skipped" in proc.stdout and "deselected" in proc.stdout


# --- on a GPU ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cuda_tiny(data_dir):
    return load_cifar10(data_dir, download=False, train_subset=256, test_subset=64, device="cuda")


def train(data, root, *, compile, precision="fp32", sparsity=None, epochs=3, batch_size=64, lr=0.01,
          milestones=(2,), callbacks=lambda mask: [], stream=""):
    """A seeded ResNet-20 (the CPU's initialisation, moved to the GPU), pruned by magnitude to
    `sparsity` if given, trained by train_run; (model, summary, mask). `callbacks(mask)` gives
    the run's extra callbacks; `stream` names its data order and augmentation streams."""
    hp = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, milestones=milestones, precision=precision,
                     compile=compile)
    model = seeded(lambda: get_model("resnet20"), 0).cuda()
    mask = magnitude_mask_at_sparsity(prunable_weights(model), sparsity) if sparsity else None
    config = {"arch": "resnet20", "epochs": epochs, "precision": precision, "sparsity": sparsity}
    summary = train_run(model, *data, hp, arch="resnet20", config=config, ckpt_dir=root / "ck",
                        results_dir=root / "res", save_as=[(epochs, "final.pt")], mask=mask,
                        callbacks=callbacks(mask), stream=stream)
    return model, summary, mask


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def pruned_nonzeros(state, mask):
    """How many weights the mask prunes are not zero in `state` (name -> tensor)."""
    return sum(int(torch.count_nonzero(state[name].detach().cpu()[m.cpu() == 0])) for name, m in mask.items())


class ZerosBeforeEveryStep(Callback):
    """Before every training step (so after the previous step and its mask), counts the pruned
    weights that are not zero, on the device (no host sync inside the loop)."""

    def __init__(self, mask):
        self.mask, self.steps = mask, 0
        self.nonzero = torch.zeros((), dtype=torch.long, device="cuda")

    def perturb(self, model, x, y):
        params = dict(model.named_parameters())
        for name, m in self.mask.items():
            self.nonzero += ((params[name].detach() != 0) & (m == 0)).sum()
        self.steps += 1
        return x


@pytest.mark.cuda
def test_masked_run_under_cuda_graphs_keeps_its_zeros_after_every_step(cuda_tiny, tmp_path, monkeypatch):
    import torch._inductor.config
    from torch._dynamo.utils import counters

    replays = []
    replay = torch.cuda.CUDAGraph.replay

    def counting_replay(self):
        replays.append(1)
        return replay(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting_replay)
    # a step that falls back from CUDA graphs is an error, not a quiet eager run
    monkeypatch.setattr(torch._inductor.config.triton, "cudagraph_or_error", True, raising=False)
    skips = counters["inductor"]["cudagraph_skips"]
    checkers = []

    def zero_check(mask):
        checkers.append(ZerosBeforeEveryStep(mask))
        return checkers

    # 256 images in batches of 48: 5 full batches and one of 16 (two graphs), 3 epochs
    model, summary, mask = train(cuda_tiny, tmp_path, compile="on", sparsity=0.9, batch_size=48,
                                 callbacks=zero_check)
    assert summary["compiled"] is True and summary["device"].startswith("cuda")
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert counters["inductor"]["cudagraph_skips"] == skips
    assert len(replays) > 0  # the steps ran as CUDA graph replays
    (checker,) = checkers
    assert checker.steps == 3 * 6
    assert int(checker.nonzero) == 0  # before every step after the first: the previous step's zeros held
    assert pruned_nonzeros(dict(model.named_parameters()), mask) == 0  # after the last step
    final = load(tmp_path / "ck" / "final.pt")
    assert final["mask"].keys() == mask.keys()
    assert pruned_nonzeros(final["model"], final["mask"]) == 0
    kept = sum(int(m.sum()) for m in final["mask"].values())
    assert kept == sum(int(torch.count_nonzero(final["model"][n])) for n in final["mask"])  # survivors trained


# Tolerances, from measurements of the same setting on the CPU (eager fp32, 256 images, batch 64,
# lr 0.01, 3 epochs): perturbing the initial weights by 1e-7 relative (about one fp32 rounding)
# moved the epoch-3 train loss by 1.5e-3 relative and the test loss by 1e-3; by 4e-3 (one bf16
# rounding) by up to 7e-3 and 2e-2. Compiled and eager kernels round at different places (fused
# kernels keep intermediates in fp32; under bf16 autocast that is a bf16 rounding per activation),
# so allow about 5x that growth: fp32 1e-2 / 5e-2, bf16 3e-2 / 1.5e-1. Over the same 3 epochs the
# train loss falls by over 30% (3.5 -> 2.4), so a compiled step that trained stale weights, lost the
# mask or skipped updates would be far outside these.
@pytest.mark.cuda
@pytest.mark.parametrize("precision, train_rel, test_rel", [("fp32", 1e-2, 5e-2), ("auto", 3e-2, 1.5e-1)])
def test_compiled_and_eager_cuda_runs_agree(cuda_tiny, tmp_path, monkeypatch, precision, train_rel, test_rel):
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", False)  # both runs on the same convolution kernels
    monkeypatch.setattr(cudnn, "deterministic", True)
    if precision == "fp32":  # plain fp32: no TF32 either
        monkeypatch.setattr(cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    runs = {}
    for compile in ("off", "on"):
        model, summary, mask = train(cuda_tiny, tmp_path / compile, compile=compile, precision=precision,
                                     sparsity=0.5)
        assert summary["compiled"] == (compile == "on")
        assert summary["precision"] == resolve_precision(precision, "cuda")
        runs[compile] = (load_csv(tmp_path / compile / "res" / "trajectory.csv"),
                         load(tmp_path / compile / "ck" / "final.pt"))
    (rows_e, final_e), (rows_c, final_c) = runs["off"], runs["on"]
    assert len(rows_e) == len(rows_c) == 4
    for a, b in zip(rows_e, rows_c):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=train_rel), a["epoch"]
        assert float(b["test_loss"]) == pytest.approx(float(a["test_loss"]), rel=test_rel), a["epoch"]
    first, last = float(rows_e[1]["train_loss"]), float(rows_e[-1]["train_loss"])
    assert first - last > 3 * train_rel * first  # the trajectory moves far more than the tolerance
    assert final_e["mask"].keys() == final_c["mask"].keys()
    for name in final_e["mask"]:
        assert torch.equal(final_e["mask"][name], final_c["mask"][name]), name
    assert pruned_nonzeros(final_e["model"], final_e["mask"]) == pruned_nonzeros(final_c["model"], final_c["mask"]) == 0


class Killed(Exception):
    """Stands for SIGKILL: raised right after resume.pt for epoch 1 was written."""


@pytest.mark.cuda
@pytest.mark.parametrize("compile", ["auto", "off"])
def test_killed_cuda_run_resumes_bit_identical_with_deterministic(data_dir, tmp_path, capsys, monkeypatch, compile):
    """train_dense.py --device cuda --deterministic (compiled by default on CUDA, and eager),
    killed after epoch 1 and run again, ends with the uninterrupted run's exact weights and CSV."""
    cudnn = torch.backends.cudnn
    for flag in ("benchmark", "deterministic"):  # --deterministic sets them process-wide: restored after
        monkeypatch.setattr(cudnn, flag, getattr(cudnn, flag))
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", torch._dynamo.config.suppress_errors)  # auto sets it
    args = ["--data-dir", data_dir, "--no-download", "--device", "cuda", "--deterministic", "--compile", compile,
            "--train-subset", 128, "--test-subset", 64, "--batch-size", 32, "--epochs", 2, "--milestones", 1,
            "--save-epochs", 1, 2]

    def main(root):
        train_dense.main([str(a) for a in [*args, "--checkpoint-dir", root / "ck", "--results-dir", root / "res"]])

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    main(ref)
    save = utils.train.save_torch

    def killing_save(obj, path):
        save(obj, path)
        if Path(path).name == "resume.pt" and obj["epoch"] == 1:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(utils.train, "save_torch", killing_save)
        with pytest.raises(Killed):
            main(cut)
    assert (cut / "ck" / "dense" / "resume.pt").is_file()
    capsys.readouterr()
    main(cut)
    assert "resuming after epoch 1" in capsys.readouterr().err
    assert not (cut / "ck" / "dense" / "resume.pt").exists()
    for name in ("init.pt", "epoch_001.pt", "epoch_002.pt", "bn_history.pt"):
        a, b = load(ref / "ck" / "dense" / name), load(cut / "ck" / "dense" / name)
        a, b = (a["model"], b["model"]) if "model" in a else (a, b)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)

    def rows(root):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in load_csv(root / "res" / "dense" / "trajectory.csv")]

    assert rows(ref) == rows(cut)
    summary = load_json(cut / "res" / "dense" / "summary.json")
    assert summary["device"].startswith("cuda") and summary["compiled"] == (compile == "auto")


@pytest.mark.cuda
def test_precision_auto_picks_bf16_from_compute_capability_8_and_records_it(cuda_tiny, tmp_path):
    capability = torch.cuda.get_device_capability()
    want = "bf16" if capability >= (8, 0) else "fp32"  # native bf16 tensor cores from Ampere (8.0) on
    assert resolve_precision("auto", "cuda") == want
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    with autocast("cuda", "auto"):
        out = conv(torch.rand(2, 3, 8, 8, device="cuda"))
    assert out.dtype == (torch.bfloat16 if want == "bf16" else torch.float32)
    model, summary, _ = train(cuda_tiny, tmp_path, compile="off", precision="auto", epochs=1, milestones=())
    assert summary["precision"] == want
    assert load_json(tmp_path / "res" / "summary.json")["precision"] == want  # recorded: what was used
    assert summary["config"]["precision"] == "auto"  # and what was asked for
    # fp32 master weights: autocast computes in bf16, the parameters and checkpoints stay fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    final = load(tmp_path / "ck" / "final.pt")["model"]
    assert all(t.dtype == torch.float32 for t in final.values() if t.is_floating_point())


# --- true fp32 in the attacks and the three-regime metrics --------------------------------------

@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """Two copies of a ResNet-20 (one initialisation, two data orders), each trained 6 epochs on
    1,024 real images (CUDA, fp32): their CPU state dicts."""
    data = load_cifar10(data_dir, download=False, train_subset=1024, test_subset=64, device="cuda")
    states = []
    for stream in ("", "copy1"):
        model, _, _ = train(data, tmp_path_factory.mktemp("trained"), compile="off", epochs=6, batch_size=128,
                            lr=0.1, milestones=(4,), stream=stream)
        states.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return states


def twins(state):
    """The same network on the CPU and on the GPU."""
    cpu = get_model("resnet20")
    cpu.load_state_dict(state)
    return cpu, copy.deepcopy(cpu).cuda()


def record_precision(model, seen):
    """A forward pre-hook noting (TF32 in matmuls, TF32 in cuDNN, CUDA autocast) at every call."""
    def hook(module, args):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     torch.is_autocast_enabled("cuda")))
    return model.register_forward_pre_hook(hook)


@pytest.fixture
def tf32_on(monkeypatch):
    """TF32 allowed in matmuls and convolutions, as a fast training run may leave it."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)


def relative_error(a, b):
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max())


# fp32 on two devices differs only in summation order: ~1e-7 relative per operation, ~1e-6 through
# ResNet-20's 20 layers. TF32 rounds every product's inputs to 10 mantissa bits (4.9e-4 relative),
# ~1e-3 through the network. Logits within 1e-4 of the CPU's (relative to the largest) and input
# gradients within 1e-3 sit between the two. Accuracies: an image changes class only on a near-tie
# of its logits, and a PGD step only where a gradient component's sign flips (|component| ~1e-6 of
# the largest), so clean accuracy within 1 image of 256, FGSM within 2 and PGD-5 within 3.
@pytest.mark.cuda
def test_attacks_run_in_true_fp32_and_agree_with_the_cpu(trained, data_dir, tf32_on):
    cpu, gpu = twins(trained[0])
    test_cpu = load_cifar10(data_dir, download=False, test_subset=256)[1]
    test_gpu = load_cifar10(data_dir, download=False, test_subset=256, device="cuda")[1]
    seen = []
    handle = record_precision(gpu, seen)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # even inside the training loop's autocast
        r_gpu = robust_evaluate(gpu, test_gpu, steps=5, limit=256)
    handle.remove()
    assert seen and set(seen) == {(False, False, False)}  # every forward: no TF32, no autocast
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored after
    r_cpu = robust_evaluate(cpu, test_cpu, steps=5, limit=256)
    assert r_gpu["images"] == r_cpu["images"] == 256
    for key, images in (("clean_acc", 1), ("fgsm_acc", 2), ("pgd_acc", 3)):
        assert abs(r_gpu[key] - r_cpu[key]) <= 100 * images / 256 + 1e-9, (key, r_gpu, r_cpu)
    assert r_cpu["clean_acc"] > 20  # a trained network: the attacks have something to flip

    x, y = next(test_cpu.batches(128))
    with eval_mode(cpu):
        grad_cpu, logits_cpu = input_gradient(cpu, x, y, amp=False)
    with eval_mode(gpu), strict_fp32("cuda"):
        grad_gpu, logits_gpu = input_gradient(gpu, x.cuda(), y.cuda(), amp=False)
    with eval_mode(gpu):  # the same with TF32 allowed: what strict_fp32 guards against
        _, logits_tf32 = input_gradient(gpu, x.cuda(), y.cuda(), amp=False)
    strict = relative_error(logits_gpu, logits_cpu)
    assert strict < 1e-4
    assert float((grad_gpu.cpu() - grad_cpu).norm() / grad_cpu.norm()) < 1e-3
    if torch.cuda.get_device_capability() >= (8, 0):  # TF32 hardware: the check can tell it apart
        assert relative_error(logits_tf32, logits_cpu) > 10 * strict


# The three-regime metrics between two trained copies: losses are means over 256 images (fp32 reordering ~1e-6), so 1e-4
# relative; an error rate may differ by an image on a near-tie (1/256); CKA of two 256 x 10 softmax
# matrices in float64 from fp32 outputs, 1e-5.
@pytest.mark.cuda
def test_three_regime_metrics_run_in_true_fp32_and_agree_with_the_cpu(trained, data_dir, tf32_on):
    results = {}
    for device in ("cpu", "cuda"):
        train_split = load_cifar10(data_dir, download=False, train_subset=256, test_subset=16, device=device)[0]
        scratch = get_model("resnet20").to(device)
        names = [n for n, _ in scratch.named_parameters()]
        ends = [{n: s[n].to(device) for n in names} for s in trained]
        seen = []
        handle = record_precision(scratch, seen)
        rows = linear_path(scratch, *ends, train_split, points=3, bn_batches=2)
        outputs = []
        for state in trained:
            scratch.load_state_dict({k: v.to(device) for k, v in state.items()})
            outputs.append(softmax_outputs(scratch, train_split, 256))
        handle.remove()
        if device == "cuda":
            assert seen and set(seen) == {(False, False, False)}
        results[device] = rows, linear_cka(*outputs)
    (rows_cpu, cka_cpu), (rows_gpu, cka_gpu) = results["cpu"], results["cuda"]
    assert [r["alpha"] for r in rows_gpu] == [0.0, 0.5, 1.0]
    for a, b in zip(rows_cpu, rows_gpu):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4), a["alpha"]
        assert abs(b["train_error"] - a["train_error"]) <= 1 / 256 + 1e-12, a["alpha"]
    assert cka_gpu == pytest.approx(cka_cpu, abs=1e-5)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored after


# --- every entry script on CUDA (the slowest: last) ----------------------------------------------

@pytest.mark.cuda
def test_smoke_pipeline_runs_on_cuda(tmp_path, data_dir, mnist_dir):
    """`run_all.py --preset smoke --device cuda`: every entry script's smoke settings on the GPU,
    compiled (--compile auto is on for CUDA), the report at the end."""
    res = tmp_path / "results"
    proc = run_script("run_all.py", "--preset", "smoke", "--device", "cuda", "--data-dir", data_dir,
                      "--no-download", "--mnist-dir", mnist_dir, "--checkpoint-dir", tmp_path / "checkpoints",
                      "--results-dir", res, "--plots-dir", tmp_path / "plots", timeout=900)
    for step in STEPS:
        assert f"] {step}: done in" in proc.stdout, (step, proc.stdout[-3000:])
    runs = [s for s in (json.loads(p.read_text()) for p in res.rglob("summary.json") if "deploy" not in p.parts)
            if "device" in s]  # the training runs (deploy.py's measurements are not trainings)
    assert len(runs) >= 100  # every training run of every script (102 or more)
    assert {s["device"].split(":")[0] for s in runs} == {"cuda"}
    assert all(s.get("compiled") for s in runs)
    assert (res / "report.pdf").is_file() and (res / "code.zip").is_file()
