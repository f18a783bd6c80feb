"""Model registry and checkpoint loading.

A checkpoint is a `torch.save`d dict: `model` (state_dict), `arch`, `epoch`, `config` (every
setting of the run) and, where they apply, `mask` (parameter name -> 0/1 tensor) and `widths`
(the inner widths of a channel-pruned network).
"""
from pathlib import Path

import torch

from models.lenet import LeNet5, LeNet300
from models.resnet import CifarResNet
from models.vgg import VGG16_PLAN, CifarVGG
from utils.errors import UserError
from utils.io import load_torch

# name -> ResNet depth, or the VGG plan (CIFAR-10 networks); the MNIST LeNets apart
ARCHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "vgg16": VGG16_PLAN}
MNIST_ARCHS = {"lenet300": LeNet300, "lenet5": LeNet5}
DATASETS = {**{a: "cifar10" for a in ARCHS}, **{a: "mnist" for a in MNIST_ARCHS}}


def get_model(arch="resnet20", num_classes=10, shortcut="B", widths=None, dataset=None):
    """Build a model by name: a CIFAR ResNet (`widths` gives the inner width of every block), the
    CIFAR VGG-16 (no shortcuts, no `widths`) or an MNIST LeNet. `dataset`, when given, must be
    the one the architecture is made for."""
    if arch not in DATASETS:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(DATASETS)}")
    if dataset is not None and dataset != DATASETS[arch]:
        raise UserError(f"{arch} is made for {DATASETS[arch]}, not {dataset}")
    if arch in MNIST_ARCHS:
        return MNIST_ARCHS[arch](num_classes)
    if arch.startswith("vgg"):
        if widths is not None:
            raise UserError(f"{arch} takes no block widths (channel-pruned VGGs are not supported)")
        return CifarVGG(ARCHS[arch], num_classes)
    return CifarResNet(ARCHS[arch], num_classes, shortcut, widths)


def read_checkpoint(path, device="cpu", hint="python train_dense.py"):
    """torch.load a checkpoint dict, turning a missing or corrupt file into a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; make it with: {hint}")
    ckpt = load_torch(path, f"delete it and make it again with: {hint} --force", device, kind=None)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no 'model'/'arch'); "
                        f"make it with: {hint}")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu"):
    config = ckpt.get("config") or {}
    # the class count is the output layer's, so 5-way label-split LeNets rebuild too
    num_classes = ckpt.get("num_classes") or config.get("num_classes") or 10
    model = get_model(ckpt["arch"], num_classes, shortcut=config.get("shortcut", "B"), widths=ckpt.get("widths"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit a {ckpt['arch']} "
                        f"({str(e).splitlines()[0][:120]})") from None
    return model.to(device)


def load_checkpoint(path, device="cpu", hint="python train_dense.py"):
    """Return (model, ckpt): the model rebuilt from `arch`, `widths` and `config`, weights loaded."""
    ckpt = read_checkpoint(path, device, hint)
    return model_from_checkpoint(ckpt, device), ckpt


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def prunable_weights(model):
    """Name -> weight of every Conv2d and Linear layer (the unstructured-pruning candidates)."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def classifier_weight_name(model):
    """The output layer's weight name (the last Linear layer), or None without one."""
    names = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return names[-1] if names else None
