"""The one training loop every script uses: SGD + multi-step schedule, masks, resume, callbacks.

A run lives in two folders: `ckpt_dir` (named checkpoints, `resume.pt` while unfinished) and
`results_dir` (`trajectory.csv`, rewritten every epoch, and `summary.json`, written last).
`plan_run` alone decides what a call does: a finished run (a `summary.json`, every output file
there) is skipped; an interrupted one (`resume.pt`) resumes after its last epoch; a finished run
that lost an output file is redone; `force` redoes everything. `resume.pt` holds the model, the
optimizer, every generator, the callbacks' state and the rows so far, so a killed run started
again with the same command ends with the same weights and the same CSV (bar `seconds`).

`train_run` is the loop; everything else plugs in as a small callback object (`Callback`): what
to save when (`SaveCheckpoints`), the BatchNorm γ history (`BNHistory`), extra trajectory
columns (`WeightDistance`, `DistanceFromEpoch1`, `ExtraMetrics`), batch perturbation for adversarial training
(`Perturb`), and on a CPU the restart with passive OpenMP waiting when the machine becomes busy
(`utils.pace.PaceGuard`). A callback may implement any of:

    columns(run) -> dict       extra trajectory columns of the row being recorded
    on_row(run)                after each row is recorded (epoch 0 and after every epoch)
    on_saved(run)              after each epoch's resume.pt is written (a restart resumes here)
    perturb(model, x, y) -> x  replaces each training batch
    outputs                    files under ckpt_dir a finished run must have
    summary(run) -> dict       extra summary.json entries (e.g. `SummaryFields`)
    state_dict() / load_state_dict(state)   what resume.pt must keep for it

`run` (a `Run`) carries the model, the epoch just completed, the rows, the folders and
`run.checkpoint(epoch)`, the checkpoint dict of the current weights.

Speed: batches come from device tensors, metrics are accumulated on the device and read once
per epoch, bf16 autocast where the hardware has native bf16 (fp32 master weights), channels_last.
"""
import contextlib
import functools
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import classifier_weight_name, count_params, prunable_weights
from utils.errors import UserError
from utils.inference import folded
from utils.io import load_json, load_torch, save_csv, save_json, save_torch
from utils.pruning import mask_facts

TRAJECTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
# Settings that may change between the start and the resume of a run without changing its result.
RUN_ONLY_KEYS = {"force", "device", "data_dir", "no_download", "checkpoint_dir", "results_dir", "jobs",
                 "deterministic", "compile"}


# ---------------------------------------------------------------------------------------------
# Device, seeds, precision.

def select_device(name="auto", deterministic=False):
    """The torch.device for --device; on CUDA, cuDNN autotuning unless `deterministic`.

    Autotuning (cudnn.benchmark) picks the fastest convolution kernels for the card, which may
    differ between runs; --deterministic trades that speed for bit-identical reruns on a GPU.
    CPU runs are deterministic either way.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu "
                        "or install the CUDA build: pip install -r requirements.txt")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    return device


def derive_seed(seed, stream):
    """An independent 63-bit seed per stream ("init", "order", "augment", ...) of one run seed."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def cpu_generator(seed, stream):
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def seeded(fn, seed, stream="init"):
    """Call fn() (e.g. a model constructor) with the global RNG seeded for `stream`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stream))
        return fn()


PRECISIONS = ("auto", "fp32", "bf16")
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with native bf16 tensor cores


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """AVX512-BF16 or AMX: bf16 matrix maths runs in hardware (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision, device):
    """'bf16' or 'fp32': what `precision` ('auto', 'fp32', 'bf16') means on `device`.

    auto = bf16 only where the hardware computes it natively: CUDA GPUs of compute capability
    8.0 or newer (A100, RTX 30xx, H100; not T4 or V100, which emulate it slowly) and CPUs with
    AVX512-BF16 or AMX; fp32 everywhere else.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device, precision="auto"):
    """bf16 autocast (fp32 master weights, fp32 loss) where `precision` resolves to bf16, else
    plain fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def strict_fp32(device):
    """Plain fp32 arithmetic: no autocast, and on CUDA no TF32 in matmuls or cuDNN convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(torch.device(device).type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


COMPILE_MODES = ("auto", "on", "off")


def resolve_compile(mode, device):
    """True when `mode` ('auto', 'on', 'off') means torch.compile on `device`.

    auto = on for CUDA, where ResNet-20 at batch 128 is bound by kernel launches and CUDA graphs
    remove them; off on CPUs, where compiling costs minutes and the kernels are compute-bound
    (measured: bench/README.md).
    """
    if mode not in COMPILE_MODES:
        raise UserError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return torch.device(device).type == "cuda"


def compiled_forward(model, device):
    """`model` torch.compiled for training steps (CUDA graphs on a GPU). It shares the model's
    parameters, so the optimizer, the masks and the checkpoints keep using `model` itself.
    Each batch shape compiles once (dynamic=False): the full batches and the last partial one."""
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    return torch.compile(model, dynamic=False, mode=mode)


# Evaluation batch size per device type: large on a GPU (fewer launches); 256 on a CPU, where
# activations of bigger batches fall out of the caches (measured: 0.65 s for the 1,017-image test
# slice at 256 against 0.95 s at 2,000, 2-core AVX2; bench/README.md).
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 2000


def evaluate(model, split, batch_size=None, precision="auto", compile=False):
    """(mean loss, accuracy %) of `model` in eval mode over a whole split; one host sync.

    Runs the BatchNorm-folded inference copy of the model (utils/inference.py: same function,
    fewer passes over the activations) in batches of `batch_size` (default: EVAL_BATCH for the
    device); `compile` torch.compiles that copy."""
    batch_size = batch_size or EVAL_BATCH.get(split.device.type, EVAL_BATCH_DEFAULT)
    net = folded(model, compile)
    loss_sum = torch.zeros((), device=split.device)
    correct = torch.zeros((), device=split.device, dtype=torch.long)
    with torch.inference_mode():
        for x, y in split.batches(batch_size):
            with autocast(split.device, precision):
                out = net(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
        loss, correct = torch.stack([loss_sum, correct.double()]).tolist()
    return loss / len(split), 100.0 * correct / len(split)


# ---------------------------------------------------------------------------------------------
# Masks, checkpoints, one epoch.

class MaskedParams:
    """Parameters paired with 0/1 masks; `apply()` zeroes pruned entries with one foreach op."""

    def __init__(self, model, mask):
        params = dict(model.named_parameters())
        unknown = sorted(set(mask) - set(params))
        if unknown:
            raise UserError(f"mask names parameters the model does not have: {unknown[:3]}")
        self.params = [params[n] for n in mask]
        self.masks = [mask[n].to(device=params[n].device, dtype=params[n].dtype) for n in mask]

    @torch.no_grad()
    def apply(self):
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


def bn_weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def squared_distance(model, reference):
    """‖θ − θ_ref‖² over the prunable weights named in `reference`."""
    current = prunable_weights(model)
    with torch.no_grad():
        diffs = torch._foreach_sub([current[n] for n in reference], list(reference.values()))
        return torch.stack(torch._foreach_norm(diffs)).double().square().sum()


def checkpoint(model, arch, epoch, config, **extra):
    """The checkpoint dict (CPU tensors, so it loads anywhere)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {"model": state, "arch": arch, "epoch": epoch, "config": config}
    ckpt.update({k: v for k, v in extra.items() if v is not None})
    return ckpt


def train_epoch(model, optimizer, train, batch_size, order_gen, aug_gen, masked=None, bn_l1=0.0,
                perturb=None, max_steps=None, precision="auto", forward=None):
    """One pass over `train` (or `max_steps` batches); returns the summed loss and the number
    correct as device tensors, so the caller decides when to sync (once per epoch).
    `forward`: what computes the outputs (default `model`; `compiled_forward(model)`)."""
    device = next(model.parameters()).device
    bn_list = list(bn_weights(model).values())
    use_autocast = functools.partial(autocast, device, resolve_precision(precision, device))
    forward = model if forward is None else forward
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for step, (x, y) in enumerate(train.batches(batch_size, order_gen, aug_gen)):
        if step == max_steps:
            break
        if perturb is not None:
            x = perturb(model, x, y)
        with use_autocast():
            out = forward(x)
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if bn_l1:  # network slimming: d/dγ of λ·|γ|
            torch._foreach_add_([w.grad for w in bn_list], torch._foreach_sign(bn_list), alpha=bn_l1)
        optimizer.step()
        if masked is not None:
            masked.apply()  # pruned weights stay exactly zero, momentum and decay notwithstanding
        loss_sum += loss.detach().float() * len(y)
        correct += (out.argmax(1) == y).sum()
    return loss_sum, correct


def make_optimizer(model, hp):
    return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum,
                           weight_decay=hp.weight_decay)


# ---------------------------------------------------------------------------------------------
# The one skip / resume / redo decision.

def _run_identity(config):
    return {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}


def check_same_run(saved_config, config, what, folder):
    a, b = _run_identity(saved_config), _run_identity(config)
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise UserError(f"{what} in {folder} was made with other settings ({', '.join(diff)}); "
                        "rerun with the same flags, or add --force to start it over")


@dataclass
class Plan:
    """What a call of `train_run` with these folders and config will do.

    action: "skip" (finished: `summary` holds its summary.json), "resume" (interrupted: resume.pt
    there), "start" (nothing there yet) or "redo" (forced, or finished but `missing` output files).
    """
    action: str
    summary: dict = None
    missing: list = field(default_factory=list)

    @property
    def skip(self):
        return self.action == "skip"

    @property
    def fresh(self):
        """True when the run must start over, throwing away any state (pass as `force`)."""
        return self.action == "redo"


def plan_run(ckpt_dir, results_dir, config, outputs=(), force=False):
    """The rule every script follows, decided here only:
    finished -> skip; interrupted -> resume; finished but an output file lost -> redo;
    `force` -> redo. `outputs` are file names under `ckpt_dir` a finished run must have.

    A finished or interrupted run made with other settings is a UserError (never mixed).
    """
    ckpt_dir, results_dir = Path(ckpt_dir), Path(results_dir)
    if force:
        return Plan("redo")
    summary_path = results_dir / "summary.json"
    if summary_path.is_file():
        summary = load_json(summary_path, fix=f"delete {summary_path} to redo the run, or rerun with --force")
        check_same_run(summary.get("config") or {}, config, "the finished run", results_dir)
        missing = [name for name in outputs if not (ckpt_dir / name).is_file()]
        if missing:
            return Plan("redo", missing=missing)
        return Plan("skip", summary=summary)
    if (ckpt_dir / "resume.pt").is_file():
        return Plan("resume")
    return Plan("start")


def load_resume_state(path, config):
    """resume.pt, checked to hold a run of this config; damaged files are UserErrors."""
    fix = f"delete {path} to start the run over, or rerun with --force"
    state = load_torch(path, fix)
    needed = {"model", "optimizer", "epoch", "order_gen", "aug_gen", "rows", "config"}
    if not needed <= state.keys():
        raise UserError(f"{path} is not a resume state of this project (no {sorted(needed - state.keys())[0]}); {fix}")
    check_same_run(state["config"], config, "the interrupted run", Path(path).parent)
    return state


def finished_summary(results_dir, config, force=False):
    """The summary of a finished run with this config, or None if it must (re)run."""
    plan = plan_run(Path(results_dir), results_dir, config, force=force)
    return plan.summary


# ---------------------------------------------------------------------------------------------
# Callbacks.

@dataclass
class Run:
    """What callbacks see: the model, the epoch just completed, the rows so far, the folders."""
    model: torch.nn.Module
    arch: str
    config: dict
    ckpt_dir: Path
    results_dir: Path
    epoch: int = 0
    rows: list = field(default_factory=list)
    checkpoint_extra: dict = field(default_factory=dict)

    def checkpoint(self, epoch=None):
        return checkpoint(self.model, self.arch, self.epoch if epoch is None else epoch,
                          self.config, **self.checkpoint_extra)


class Callback:
    """Base class: every hook does nothing. See the module docstring for the hooks."""
    outputs = ()

    def columns(self, run):
        return {}

    def on_row(self, run):
        pass

    def summary(self, run):
        return {}

    def on_saved(self, run):
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass


class SummaryFields(Callback):
    """Fixed entries added to summary.json (e.g. the mask's `chosen_by_score`)."""

    def __init__(self, **fields):
        self.fields = fields

    def summary(self, run):
        return dict(self.fields)


class SaveCheckpoints(Callback):
    """Save the checkpoint `name` after epoch `epoch`, for each (epoch, name) of `save_as`."""

    def __init__(self, save_as):
        self.names = {}
        for epoch, name in save_as:
            self.names.setdefault(int(epoch), []).append(name)
        self.outputs = tuple(name for names in self.names.values() for name in names)

    def on_row(self, run):
        for name in self.names.get(run.epoch, []):
            save_torch(run.checkpoint(), run.ckpt_dir / name)


class BNHistory(Callback):
    """`ckpt_dir/bn_history.pt`: BatchNorm name -> (epochs+1, C) γ, row e = γ after epoch e."""
    outputs = ("bn_history.pt",)

    def __init__(self):
        self.history = {}

    def on_row(self, run):
        for name, weight in bn_weights(run.model).items():
            self.history.setdefault(name, []).append(weight.detach().float().cpu().clone())
        save_torch({n: torch.stack(h) for n, h in self.history.items()}, run.ckpt_dir / "bn_history.pt")

    def state_dict(self):
        return self.history

    def load_state_dict(self, state):
        self.history = {n: list(h) for n, h in state.items()}


class WeightDistance(Callback):
    """The column `weight_distance` = ‖θ_e − θ_ref‖² over the weights named in `reference`."""

    def __init__(self, reference):
        self.reference = reference

    def columns(self, run):
        return {"weight_distance": squared_distance(run.model, self.reference).item()}


class DistanceFromEpoch1(Callback):
    """The columns `distance_from_epoch1` = ‖θ_e − θ_1‖₂ and `norm_epoch1` = ‖θ_1‖₂ over every
    parameter (weights, biases, BatchNorm γ and β; no buffers), θ_1 the weights after epoch 1:
    what EarlyCroP's authors' code measures (blank at epoch 0, before θ_1 exists)."""

    def __init__(self):
        self.reference = None

    def columns(self, run):
        params = [p.detach().float() for p in run.model.parameters()]
        if run.epoch == 1:
            self.reference = [p.clone() for p in params]
        if self.reference is None:
            return {"distance_from_epoch1": None, "norm_epoch1": None}
        self.reference = [r.to(p.device) for r, p in zip(self.reference, params)]  # after a resume: CPU
        with torch.no_grad():
            distance = torch.stack(torch._foreach_norm(torch._foreach_sub(params, self.reference)))
            norm = torch.stack(torch._foreach_norm(self.reference))
        return {"distance_from_epoch1": distance.double().square().sum().sqrt().item(),
                "norm_epoch1": norm.double().square().sum().sqrt().item()}

    def state_dict(self):
        return None if self.reference is None else [t.cpu() for t in self.reference]

    def load_state_dict(self, state):
        self.reference = None if state is None else list(state)


class ExtraMetrics(Callback):
    """Columns from a callable(model) -> dict (e.g. robust accuracy), once per row."""

    def __init__(self, fn):
        self.fn = fn

    def columns(self, run):
        return self.fn(run.model)


class Perturb(Callback):
    """Every training batch x replaced by fn(model, x, y) (e.g. PGD adversarial training); the
    callable's state_dict()/load_state_dict(), if any, go into resume.pt."""

    def __init__(self, fn):
        self.fn = fn

    def perturb(self, model, x, y):
        return self.fn(model, x, y)

    def state_dict(self):
        return self.fn.state_dict() if hasattr(self.fn, "state_dict") else None

    def load_state_dict(self, state):
        if state is not None and hasattr(self.fn, "load_state_dict"):
            self.fn.load_state_dict(state)


def standard_callbacks(save_as=(), weight_distance_ref=None, bn_history=False, perturb=None,
                       extra_metrics=None):
    """The callbacks the keyword arguments of `train_run` stand for, in column order."""
    callbacks = [SaveCheckpoints(save_as)]
    if bn_history:
        callbacks.append(BNHistory())
    if weight_distance_ref is not None:
        callbacks.append(WeightDistance(weight_distance_ref))
    if extra_metrics is not None:
        callbacks.append(ExtraMetrics(extra_metrics))
    if perturb is not None:
        callbacks.append(Perturb(perturb))
    return callbacks


def _perturbation(callbacks):
    fns = [c.perturb for c in callbacks if hasattr(c, "perturb")]
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def chain(model, x, y):
        for fn in fns:
            x = fn(model, x, y)
        return x
    return chain


# ---------------------------------------------------------------------------------------------
# The loop.

def train_run(model, train, test, hp, *, arch, config, ckpt_dir, results_dir, seed=0,
              force=False, save_as=(), mask=None, bn_l1=0.0, checkpoint_extra=None,
              weight_distance_ref=None, bn_history=False, perturb=None, extra_metrics=None,
              callbacks=(), outputs=None, optimizer=None, stream="", desc="train"):
    """Train `model` with the recipe `hp` (a TrainConfig) and log everything; return the summary.

    What the call does (skip, resume, start, redo) is `plan_run`'s decision.
    save_as: (epoch, filename) pairs, e.g. (0, "init.pt"), (160, "epoch_160.pt").
    mask: parameter name -> 0/1 tensor, applied before epoch 0 and after every optimizer step.
    bn_l1: network-slimming L1 penalty λ·sign(γ) added to every BatchNorm weight's gradient.
    weight_distance_ref, bn_history, perturb, extra_metrics: shorthands for the callbacks
      WeightDistance, BNHistory, Perturb and ExtraMetrics; `callbacks` adds any others.
    outputs: files under ckpt_dir a finished run must have (default: every callback's outputs,
      i.e. the save_as files and bn_history.pt); a finished run missing one is redone.
    optimizer: callable (model, hp) -> torch.optim.Optimizer (default: SGD, `make_optimizer`).
    stream: name of the data-order and augmentation generator streams: "" -> "order",
      "augment"; "copy1" -> "copy1/order", "copy1/augment" (independent copies of one seed).
    hp.precision ('auto', 'fp32', 'bf16') picks autocast; the summary records what was used.
    hp.compile ('auto', 'on', 'off'): torch.compile the step and the evaluation (`resolve_compile`);
      it changes speed, not the run, so a run may resume with another --compile.
    """
    ckpt_dir, results_dir = Path(ckpt_dir), Path(results_dir)
    callbacks = standard_callbacks(save_as, weight_distance_ref, bn_history, perturb,
                                   extra_metrics) + list(callbacks)
    if outputs is None:
        outputs = [name for c in callbacks for name in c.outputs]
    plan = plan_run(ckpt_dir, results_dir, config, outputs, force)
    if plan.skip:
        tqdm.write(f"{desc}: finished already ({results_dir}/summary.json); --force redoes it", file=sys.stderr)
        return plan.summary
    hp.validate()
    late = sorted({int(e) for e, _ in save_as if not 0 <= int(e) <= hp.epochs})
    if late:
        raise UserError(f"{desc}: asked to save epoch(s) {late}, outside the run's 0..{hp.epochs} "
                        "epochs; keep --save-epochs within --epochs")
    device = next(model.parameters()).device
    precision = resolve_precision(hp.precision, device)
    compile_ = resolve_compile(hp.compile, device)
    if compile_ and hp.compile == "auto":  # a machine where compiling fails (no Triton...) runs eager
        torch._dynamo.config.suppress_errors = True
    resume_path = ckpt_dir / "resume.pt"
    if plan.fresh:
        if plan.missing:
            tqdm.write(f"{desc}: finished, but {', '.join(plan.missing)} missing from {ckpt_dir}; "
                       "training it again", file=sys.stderr)
        resume_path.unlink(missing_ok=True)
        # no longer finished: a redo killed half-way then resumes instead of counting as done
        (results_dir / "summary.json").unlink(missing_ok=True)
    model.to(memory_format=torch.channels_last)
    opt = (optimizer or make_optimizer)(model, hp)
    masked = MaskedParams(model, mask or {})
    prefix = f"{stream}/" if stream else ""
    order_gen, aug_gen = cpu_generator(seed, prefix + "order"), cpu_generator(seed, prefix + "augment")
    run = Run(model, arch, config, ckpt_dir, results_dir,
              checkpoint_extra={k: v for k, v in dict(checkpoint_extra or {}, mask=mask).items() if v is not None})
    perturb_batch = _perturbation(callbacks)
    from utils.pace import PaceGuard  # (it builds on Callback, defined here)
    if PaceGuard.wanted(device, torch.get_num_threads()):
        callbacks.append(PaceGuard(torch.get_num_threads(), desc))
    forward = compiled_forward(model, device) if compile_ else model

    def record(lr, seconds_start, train_metrics=None):
        if train_metrics is None:  # epoch 0: the starting weights on the un-augmented train set
            train_metrics = evaluate(model, train, precision=precision, compile=compile_)
        test_loss, test_acc = evaluate(model, test, precision=precision, compile=compile_)
        row = {"epoch": run.epoch, "lr": lr, "train_loss": train_metrics[0],
               "train_acc": train_metrics[1], "test_loss": test_loss, "test_acc": test_acc}
        for c in callbacks:
            row.update(c.columns(run))
        row["seconds"] = time.perf_counter() - seconds_start
        run.rows.append(row)
        for c in callbacks:
            c.on_row(run)

    if resume_path.is_file():
        state = load_resume_state(resume_path, config)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        order_gen.set_state(state["order_gen"].cpu())
        aug_gen.set_state(state["aug_gen"].cpu())
        for i, c in enumerate(callbacks):
            c.load_state_dict(state.get("callbacks", {}).get(i))
        run.rows, run.epoch = state["rows"], state["epoch"]
        tqdm.write(f"{desc}: resuming after epoch {run.epoch} from {resume_path}", file=sys.stderr)
    else:
        masked.apply()
        record(0.0, time.perf_counter())

    columns = TRAJECTORY_COLUMNS[:-1] + [k for k in run.rows[0] if k not in TRAJECTORY_COLUMNS] + ["seconds"]
    save_csv(run.rows, results_dir / "trajectory.csv", columns)
    bar = tqdm(range(run.epoch + 1, hp.epochs + 1), desc=desc, unit="epoch", dynamic_ncols=True,
               initial=run.epoch, total=hp.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        lr = hp.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum, correct = train_epoch(model, opt, train, hp.batch_size, order_gen, aug_gen,
                                        masked, bn_l1, perturb_batch, precision=precision, forward=forward)
        loss_total, correct_total = torch.stack([loss_sum, correct.double()]).tolist()
        if not math.isfinite(loss_total):
            raise UserError(f"{desc}: training diverged at epoch {epoch} (loss is {loss_total}); "
                            "lower --lr and rerun with --force")
        run.epoch = epoch
        record(lr, t0, (loss_total / len(train), 100.0 * correct_total / len(train)))
        save_csv(run.rows, results_dir / "trajectory.csv", columns)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                 "order_gen": order_gen.get_state(), "aug_gen": aug_gen.get_state(),
                 "rows": run.rows, "config": config,
                 "callbacks": {i: s for i, c in enumerate(callbacks) if (s := c.state_dict()) is not None}}
        save_torch(state, resume_path)
        for c in callbacks:
            c.on_saved(run)
        bar.set_postfix(loss=f"{run.rows[-1]['train_loss']:.3f}", test_acc=f"{run.rows[-1]['test_acc']:.2f}")
    bar.close()

    rows = run.rows
    summary = {"test_acc": rows[-1]["test_acc"], "test_loss": rows[-1]["test_loss"],
               "train_acc": rows[-1]["train_acc"], "start_test_acc": rows[0]["test_acc"],
               "params": count_params(model), "epochs": hp.epochs,
               "seconds": sum(r["seconds"] for r in rows), "device": str(device),
               "precision": precision, "compiled": compile_, "config": config}
    if mask:
        zeros = sum(int((m == 0).sum()) for m in mask.values())
        summary["sparsity"] = zeros / sum(m.numel() for m in mask.values())
        summary.update(mask_facts(mask, classifier_weight_name(model)))
    for c in callbacks:
        summary.update(c.summary(run))
    save_json(summary, results_dir / "summary.json")
    resume_path.unlink(missing_ok=True)
    return summary
