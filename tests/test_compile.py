"""--compile: the torch.compiled step and evaluation give the eager run's numbers on a CPU, keep
pruned weights exactly zero, resume, and do not change a run's identity.

One process compiles ResNet-20 once (about a minute on 2 cores); every test here reuses that
compilation (same shapes: 64 training images in batches of 32, 64 test images)."""
import pytest
import torch

import utils.train
from data import load_cifar10
from models import get_model, prunable_weights
from utils.config import TrainConfig
from utils.io import load_csv, load_json
from utils.pruning import magnitude_mask_at_sparsity
from utils.train import resolve_compile, seeded, train_run


@pytest.fixture(scope="module")
def tiny(data_dir):
    return load_cifar10(data_dir, download=False, train_subset=64, test_subset=64)


def run(tiny, root, compile, mask=None, epochs=2, **kwargs):
    # lr 0.01: a gentle start, so the eval-mode test loss after one epoch is not on a knife edge
    hp = TrainConfig(epochs=epochs, batch_size=32, lr=0.01, milestones=(1,), precision="fp32", compile=compile)
    model = seeded(lambda: get_model("resnet20"), 0)
    if mask is not None:
        mask = mask(model)
    config = {"arch": "resnet20", "epochs": epochs, "compile": compile, "seed": 0}
    summary = train_run(model, *tiny, hp, arch="resnet20", config=config, ckpt_dir=root / "ck",
                        results_dir=root / "res", save_as=[(epochs, "final.pt")], mask=mask, **kwargs)
    return model, summary


def test_auto_compiles_on_cuda_only():
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert resolve_compile("on", "cpu") and not resolve_compile("off", "cuda")


def test_compiled_trajectory_matches_eager(tiny, tmp_path):
    eager, s_eager = run(tiny, tmp_path / "eager", "off")
    compiled, s_compiled = run(tiny, tmp_path / "compiled", "on")
    assert s_compiled["compiled"] is True and s_eager["compiled"] is False
    rows_e = load_csv(tmp_path / "eager" / "res" / "trajectory.csv")
    rows_c = load_csv(tmp_path / "compiled" / "res" / "trajectory.csv")
    assert len(rows_e) == len(rows_c) == 3
    for a, b in zip(rows_e, rows_c):
        # float rounding differs (fused kernels); the eval-mode test loss of a barely trained net
        # (running statistics of 2 steps) amplifies it most
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=2e-3), a["epoch"]
        assert float(b["test_loss"]) == pytest.approx(float(a["test_loss"]), rel=1e-2), a["epoch"]
        # an image may flip class on a near-tie: accuracy within one of 64 images
        assert abs(float(b["test_acc"]) - float(a["test_acc"])) <= 100 / 64 + 1e-9
    for (name, w_e), w_c in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(w_c, w_e, rtol=1e-2, atol=2e-3, msg=name)


def test_masked_compiled_run_keeps_pruned_weights_zero(tiny, tmp_path):
    def mask(model):
        return magnitude_mask_at_sparsity(prunable_weights(model), 0.9)

    model, summary = run(tiny, tmp_path, "on", mask=mask)
    assert summary["compiled"] and summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    final = torch.load(tmp_path / "ck" / "final.pt", map_location="cpu", weights_only=True)
    for name, m in final["mask"].items():
        assert torch.count_nonzero(final["model"][name][m == 0]) == 0, name
        assert torch.count_nonzero(dict(model.named_parameters())[name].detach()[m == 0]) == 0, name


def test_compiled_run_resumes_and_compile_is_not_its_identity(tiny, tmp_path, capsys, monkeypatch):
    """Killed after epoch 1 of an eager run, resumed compiled (a --compile change is no "other
    settings"), then rerun with --compile off: finished, nothing trained."""
    save = utils.train.save_torch

    class Killed(Exception):
        pass

    def killing_save(obj, path):
        save(obj, path)
        if path.name == "resume.pt" and obj["epoch"] == 1:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(utils.train, "save_torch", killing_save)
        with pytest.raises(Killed):
            run(tiny, tmp_path, "off")
    capsys.readouterr()
    _, summary = run(tiny, tmp_path, "on")
    err = capsys.readouterr().err
    assert "resuming after epoch 1" in err and summary["compiled"] is True
    rows = load_csv(tmp_path / "res" / "trajectory.csv")
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]
    before = (tmp_path / "res" / "summary.json").stat().st_mtime_ns
    _, again = run(tiny, tmp_path, "off")
    assert "finished already" in capsys.readouterr().err
    assert (tmp_path / "res" / "summary.json").stat().st_mtime_ns == before
    assert again == load_json(tmp_path / "res" / "summary.json")
