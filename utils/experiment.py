"""Scaffolding shared by the task scripts: common flags, set-up, folder names, validation."""
from dataclasses import dataclass
from pathlib import Path

import torch

from data import load_from_config
from utils.config import (AdversarialConfig, DataConfig, RunConfig, TrainConfig, add_dataclass_args,
                          as_dict, from_args, make_parser)
from utils.errors import UserError
from utils.train import resolve_precision, select_device


def task_parser(description, adversarial=True, **train_defaults):
    """A parser with the flags every entry script takes plus the retraining recipe.

    `adversarial` adds the --adv-* group (PGD adversarial training, off unless --adv-train);
    robustness.py, which has its own attack flags, leaves it out.
    """
    parser = make_parser(description)
    add_dataclass_args(parser, DataConfig, "data")
    add_dataclass_args(parser, RunConfig, "run")
    add_dataclass_args(parser, TrainConfig, "(re)training recipe", **train_defaults)
    if adversarial:
        add_dataclass_args(parser, AdversarialConfig, "adversarial training (PGD-AT)")
    return parser


@dataclass
class Setup:
    data: DataConfig
    run: RunConfig
    hp: TrainConfig
    device: torch.device
    train: object  # data.CifarSplit
    test: object
    adv: AdversarialConfig = None  # None or adv_train False: natural training

    @property
    def checkpoint_dir(self):
        return Path(self.run.checkpoint_dir)

    @property
    def results_dir(self):
        return Path(self.run.results_dir)

    @property
    def precision(self):
        """'bf16' or 'fp32': what --precision means on this run's device."""
        return resolve_precision(self.hp.precision, self.device)

    def train_kwargs(self):
        """Extra keyword arguments every script passes to `train_run` (e.g. adversarial
        training's `perturb` and `extra_metrics`, set by flags added in `task_parser`)."""
        if self.adv is None or not self.adv.adv_train:
            return {}
        from utils.attacks import adversarial_train_kwargs  # attack code only when it is used

        a = self.adv
        return adversarial_train_kwargs(self.test, self.run.seed, a.adv_eps, a.adv_step,
                                        a.adv_steps, a.adv_monitor_subset,
                                        precision=self.hp.precision)

    def config(self, **extra):
        """The run's settings as one JSON-ready dict (saved in checkpoints and summaries)."""
        # The --adv-* settings join the config only when on, so natural runs keep their identity.
        adv = as_dict(self.adv) if self.adv is not None and self.adv.adv_train else {}
        return as_dict(self.data, self.run, self.hp) | adv | extra


def task_setup(args, load_data=True):
    """Validate the common flags, pick the device, load the data onto it."""
    data_cfg, run_cfg, hp = (from_args(c, args) for c in (DataConfig, RunConfig, TrainConfig))
    hp.validate()
    adv = from_args(AdversarialConfig, args) if hasattr(args, "adv_train") else None
    if adv is not None:
        adv.validate()
    device = select_device(run_cfg.device, run_cfg.deterministic)
    train, test = load_from_config(data_cfg, device) if load_data else (None, None)
    return Setup(data_cfg, run_cfg, hp, device, train, test, adv)


def pct_name(fraction, prefix):
    """Folder name for a fraction, 100·f in %g format: pct_name(0.5, 'sparsity') = 'sparsity_50'."""
    return f"{prefix}_{100 * fraction:g}"


def check_fractions(values, flag):
    """Sorted unique fractions in [0, 1), or a UserError naming the flag."""
    bad = [v for v in values if not 0 <= v < 1]
    if bad or not values:
        raise UserError(f"{flag} takes fractions in [0, 1) (0.9 = 90% removed), got {values}")
    return sorted(set(values))
