import pytest
import torch

from models import count_params, get_model, load_checkpoint, prunable_weights
from utils.errors import UserError
from utils.io import save_torch
from utils.train import checkpoint, seeded


@pytest.mark.parametrize("shortcut, params", [("B", 272_474), ("A", 269_722)])
def test_resnet20_parameter_counts(shortcut, params):
    assert count_params(get_model("resnet20", shortcut=shortcut)) == params


def test_depths_and_compact_widths():
    for arch, blocks in [("resnet20", 9), ("resnet32", 15), ("resnet56", 27)]:
        model = get_model(arch)
        assert len(model.blocks()) == blocks
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    widths = [8, 16, 4, 30, 1, 32, 64, 10, 5]
    compact = get_model("resnet20", widths=widths)
    assert [b.conv1.out_channels for b in compact.blocks()] == widths
    assert [b.conv2.in_channels for b in compact.blocks()] == widths
    assert [b.bn2.num_features for b in compact.blocks()] == [16] * 3 + [32] * 3 + [64] * 3
    assert compact(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert count_params(compact) < 272_474


def test_normalisation_is_a_buffer_and_first_operation():
    model = get_model("resnet20").eval()
    assert "normalize.mean" in model.state_dict()
    assert all("normalize" not in n for n, _ in model.named_parameters())
    x = torch.rand(4, 3, 32, 32)
    by_hand = (x - model.normalize.mean) / model.normalize.std
    model.normalize.mean.zero_()
    model.normalize.std.fill_(1.0)
    identity_out = model(by_hand)
    model2 = get_model("resnet20").eval()
    model2.load_state_dict({**model.state_dict(), **{k: v for k, v in get_model().state_dict().items()
                                                     if k.startswith("normalize")}})
    torch.testing.assert_close(model2(x), identity_out, rtol=1e-4, atol=1e-5)


def test_prunable_weights_are_conv_and_linear_only():
    names = set(prunable_weights(get_model("resnet20")))
    assert len(names) == 19 + 2 + 1  # 19 3x3 convs, 2 shortcut 1x1 convs, the classifier
    assert all(n.endswith(".weight") and "bn" not in n for n in names)
    assert "linear.weight" in names and "linear.bias" not in names


def test_kaiming_init_is_seeded():
    a = seeded(lambda: get_model("resnet20"), 3)
    b = seeded(lambda: get_model("resnet20"), 3)
    c = seeded(lambda: get_model("resnet20"), 4)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    # kaiming normal, fan_in: std = sqrt(2 / fan_in)
    w = a.layer3[1].conv2.weight
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.004


def test_checkpoint_round_trip_with_widths(tmp_path):
    model = get_model("resnet20", widths=[3] * 9)
    path = tmp_path / "c.pt"
    save_torch(checkpoint(model, "resnet20", 5, {"shortcut": "B"}, widths=[3] * 9), path)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 5 and ckpt["widths"] == [3] * 9
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_missing_and_corrupt_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found.*train_dense.py"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="unknown arch"):
        get_model("resnet18")
