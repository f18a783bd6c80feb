"""Hyperparameters as typed dataclasses with help text, turned into command-line flags.

Every entry script builds its parser from these, so a flag has one name, one default and one
help text everywhere. Scripts may override defaults,
e.g. the fine-tuning schedule of Task 2.
"""
import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field

from utils.errors import UserError


def _f(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class DataConfig:
    data_dir: str = _f("data", "CIFAR-10 root holding cifar-10-batches-py/; downloaded there when missing")
    no_download: bool = _f(False, "never touch the network; a missing dataset is an error")
    train_subset: int = _f(0, "use only the first N training images (0 = all)")
    test_subset: int = _f(0, "use only the first N test images (0 = all)")


@dataclass
class RunConfig:
    device: str = _f("auto", "auto = CUDA when available", choices=("auto", "cpu", "cuda"))
    seed: int = _f(0, "one seed for init, data order and augmentation (each its own generator)")
    checkpoint_dir: str = _f("checkpoints", "where .pt files go")
    results_dir: str = _f("results", "where CSV / JSON go")
    force: bool = _f(False, "redo finished runs (default: skip finished, resume interrupted)")
    deterministic: bool = _f(False, "deterministic cuDNN kernels (no autotuning): bit-identical reruns "
                                    "on a GPU, somewhat slower; CPU runs are deterministic either way")


@dataclass
class TrainConfig:
    epochs: int = _f(160, "training epochs")
    batch_size: int = _f(128, "minibatch size")
    lr: float = _f(0.1, "initial SGD learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "L2 weight decay (all parameters)")
    milestones: tuple[int, ...] = _f((80, 120), "epochs after which the learning rate is multiplied by 0.1")
    precision: str = _f("auto", "bf16 autocast with fp32 master weights, or fp32; auto = bf16 only "
                        "with native bf16: CUDA GPUs of compute capability >= 8.0 and CPUs with "
                        "AVX512-BF16/AMX", choices=("auto", "fp32", "bf16"))
    compile: str = _f("auto", "torch.compile the training step and the evaluation (CUDA graphs on a GPU); "
                      "auto = on for CUDA, off on a CPU, where compiling costs more than it saves "
                      "(bench/README.md); not part of a run's identity", choices=("auto", "on", "off"))

    def validate(self):
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr < 0 or self.momentum < 0 or self.weight_decay < 0:
            raise UserError("--lr, --momentum and --weight-decay must be >= 0")
        if any(m < 0 for m in self.milestones):
            raise UserError(f"--milestones must be >= 0, got {list(self.milestones)}")

    def lr_at(self, epoch):
        """Learning rate used while training epoch `epoch` (1-based): x0.1 after each milestone."""
        return self.lr * 0.1 ** sum(epoch > m for m in self.milestones)


def check_attack(eps, step, steps, flags=("--eps", "--step", "--eval-steps")):
    """ε ≥ 0 and step > 0 (1/255 units), steps ≥ 0, or a UserError naming the flags."""
    if eps < 0 or step <= 0 or steps < 0:
        raise UserError(f"{flags[0]} must be >= 0, {flags[1]} > 0 and {flags[2]} >= 0 "
                        f"(got {eps:g}, {step:g}, {steps})")


@dataclass
class AdversarialConfig:
    """The `--adv-*` flags every task script takes (utils.experiment.task_parser); off by default.
    The attack itself is utils/attacks.py, imported only when --adv-train is on."""
    adv_train: bool = _f(False, "train adversarially (PGD-AT, Madry et al.): every training batch "
                                "is replaced by its PGD examples; logs fgsm_acc/pgd_acc per epoch")
    adv_eps: float = _f(8.0, "L∞ budget ε of adversarial training, in 1/255 pixel units")
    adv_step: float = _f(2.0, "PGD step size, in 1/255 pixel units")
    adv_steps: int = _f(10, "PGD iterations per training batch (cost ≈ steps+1 × a natural epoch)")
    adv_monitor_subset: int = _f(1000, "first N test images attacked each epoch for the "
                                       "fgsm_acc/pgd_acc columns, PGD with --adv-steps (0 = all)")

    def validate(self):
        check_attack(self.adv_eps, self.adv_step, self.adv_steps,
                     ("--adv-eps", "--adv-step", "--adv-steps"))
        if self.adv_monitor_subset < 0:
            raise UserError(f"--adv-monitor-subset must be >= 0, got {self.adv_monitor_subset}")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message):
        print(f"error: {message} (see: python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def make_parser(description, prog=None):
    return Parser(prog=prog or sys.argv[0].split("/")[-1], description=description,
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_dataclass_args(parser, cls, title=None, **defaults):
    """Add one --flag per field of `cls`; keyword arguments override the field defaults."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        kind, kw = hints[f.name], {"help": f.metadata.get("help", ""), "default": default}
        if kind is bool:
            group.add_argument(flag, action="store_true", **kw)
            continue
        if typing.get_origin(kind) is tuple:
            kw.update(nargs="*", type=typing.get_args(kind)[0])
        else:
            kw["type"] = kind
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        group.add_argument(flag, **kw)
    return parser


def from_args(cls, args):
    """Build a `cls` from parsed flags (tuples stay tuples, so configs compare and serialise)."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def as_dict(*configs):
    """Merge configs into one plain dict (JSON-friendly) for checkpoints and summaries."""
    out = {}
    for c in configs:
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(c).items()})
    return out
