"""Deployable forms of a trained network, and what each costs to run and to store.

A checkpoint becomes one or more **forms** (`forms_of`):

| network | form | what it is | stored as (`deployable`) |
| --- | --- | --- | --- |
| dense | `dense` | the network itself | its state_dict |
| channel-pruned (`widths`) | `compact` | the smaller network itself | its state_dict |
| masked (`mask`) | `dense_zeros` | dense, the pruned weights zero: what training used | its state_dict |
| masked | `sparse_csr` | every Conv2d/Linear weight as CSR of its (out, in·k·k) matrix | the CSR tensors + the rest dense |
| masked | `sparse_mm` | `sparse_csr` run by `torch.sparse.mm` (convolutions as unfold + sparse × dense) | as `sparse_csr` |
| dense, CUDA cc ≥ 8.0 | `semi_structured_24` | the dense net on a 50% 2:4 magnitude mask, fp16, every Conv2d/Linear on PyTorch's 2:4 kernel | — |

`sparse_csr` is a storage form: loaded, it is densified (it runs as `dense_zeros`) or run as
`sparse_mm`, so its row carries the disk size only. A form PyTorch offers no kernel for on the
device at hand gets a row with a `note` saying so and no timings.

Measured per form (`measure_network`): the median latency of `repeats` timed forward passes at
batch 1 and at batch 128 after `warmup` passes, the forms of one network and the dense reference
timed in turns (so drift in the machine's speed hits them alike); the peak memory of the forward
pass (`peak_forward_bytes`: weights + input + the largest set of tensors alive at once, counted
op by op; kernels' internal scratch space is not seen); the bytes `torch.save` writes for the
stored form; and the largest logit difference from the masked network on real test images.
"""
import contextlib
import copy
import io
import statistics
import time
import warnings
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from models import model_from_checkpoint
from utils.channels import layer_flops
from utils.inference import _replace

SPARSE_FORMAT = "csr_per_layer"
FORMS = ("dense", "compact", "dense_zeros", "sparse_csr", "sparse_mm", "semi_structured_24")
CHECK_IMAGES = 32  # test images whose logits each timed form is checked on (tests check more)
MB = 2 ** 20  # MiB, as torch.cuda's memory statistics count


@contextlib.contextmanager
def _quiet_sparse():
    """Silence torch's "sparse CSR support is in beta" and "invariant checks disabled" warnings
    (the kernels used here are stable; the CSR tensors are built from valid dense ones)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse (CSR tensor support is in beta|invariant checks)")
        yield


# ---------------------------------------------------------------------------------------------
# Forms

def masked_network(ckpt, device="cpu"):
    """The network as training left it: the checkpoint's weights with its mask (if any) applied."""
    model = model_from_checkpoint(ckpt, device).eval()
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, m in (ckpt.get("mask") or {}).items():
            params[name].mul_(m.to(params[name]))
    return model


def forms_of(ckpt):
    """The forms a checkpoint is deployed in (module docstring)."""
    if ckpt.get("mask"):
        return ["dense_zeros", "sparse_csr", "sparse_mm"]
    return ["compact"] if ckpt.get("widths") is not None else ["dense", "semi_structured_24"]


def model_args(ckpt):
    """How to rebuild the architecture: get_model's arguments (for ResNets also CifarResNet's)."""
    config = ckpt.get("config") or {}
    return {"arch": ckpt["arch"], "num_classes": ckpt.get("num_classes") or config.get("num_classes") or 10,
            "shortcut": config.get("shortcut", "B"), "widths": ckpt.get("widths")}


def deployable(model, form, args):
    """The object a form is stored as (torch.save-able, loads with torch.load(weights_only=True))."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if form not in ("sparse_csr", "sparse_mm"):
        return {"format": "state_dict", "model_args": args, "state_dict": state}
    csr, shapes = {}, {}
    with _quiet_sparse():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = state.pop(f"{name}.weight")
                shapes[f"{name}.weight"] = list(w.shape)
                m = w.reshape(w.shape[0], -1).to_sparse_csr()
                # int32 indices (PyTorch's default is int64): 8 bytes per kept weight instead of 12
                csr[f"{name}.weight"] = torch.sparse_csr_tensor(m.crow_indices().int(), m.col_indices().int(),
                                                                m.values(), m.shape)
    return {"format": SPARSE_FORMAT, "model_args": args, "csr": csr, "shapes": shapes, "dense": state}


def densified_state(stored):
    """The state_dict of a stored form (a `sparse_csr` file's CSR matrices made dense again)."""
    if stored["format"] == "state_dict":
        return stored["state_dict"]
    with _quiet_sparse():
        weights = {n: m.to_dense().reshape(stored["shapes"][n]) for n, m in stored["csr"].items()}
    return {**stored["dense"], **weights}


def saved_bytes(obj):
    """Bytes torch.save writes for `obj` (the size of its file on disk)."""
    buf = io.BytesIO()
    with _quiet_sparse():
        torch.save(obj, buf)
    return buf.tell()


def _conv_out_size(conv, h, w):
    """Output height and width of a convolution with `conv`'s kernel, stride, padding, dilation."""
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                 zip((h, w), conv.padding, conv.dilation, conv.kernel_size, conv.stride))


class SparseConv2d(nn.Module):
    """A Conv2d (groups 1) whose weight is a CSR matrix: unfold the input, then CSR × dense."""

    def __init__(self, conv, weight_csr):
        super().__init__()
        self.register_buffer("weight", weight_csr)
        self.bias = conv.bias
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x):
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C·k·k, L)
        # one CSR x dense product per image: its (out, L) result is already that image's NCHW block
        out = torch.stack([torch.sparse.mm(self.weight, c) for c in cols])  # (N, out, L)
        oh, ow = _conv_out_size(self, h, w)
        out = out.reshape(n, self.out_channels, oh, ow)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


class SparseLinear(nn.Module):
    def __init__(self, linear, weight_csr):
        super().__init__()
        self.register_buffer("weight", weight_csr)
        self.bias = linear.bias

    def forward(self, x):
        out = torch.sparse.mm(self.weight, x.t()).t()
        return out if self.bias is None else out + self.bias


def sparse_kernel_network(stored, device="cpu"):
    """A stored `sparse_csr` form rebuilt to run on `torch.sparse.mm`: every Conv2d and Linear
    replaced by its CSR twin, everything else as in the dense network."""
    from models import get_model
    a = stored["model_args"]
    model = get_model(a["arch"], a["num_classes"], shortcut=a["shortcut"], widths=a["widths"])
    model.load_state_dict(densified_state(stored))
    with _quiet_sparse():
        for name, module in list(model.named_modules()):
            kind = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear if isinstance(module, nn.Linear) else None
            if kind is not None and (module.groups if kind is SparseConv2d else 1) == 1:
                _replace(model, name, kind(module, stored["csr"][f"{name}.weight"]))
    return model.to(device).eval()


def semi_structured_unavailable(device):
    """Why PyTorch's 2:4 semi-structured kernels cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return "unavailable: 2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0"
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "unavailable: this GPU's compute capability is below 8.0 (no 2:4 sparse tensor cores)"
    try:
        from torch.sparse import to_sparse_semi_structured  # noqa: F401
    except ImportError:
        return "unavailable: this PyTorch build has no torch.sparse.to_sparse_semi_structured"
    return None


def two_four_mask(weight):
    """The 50% 2:4 magnitude mask of a (out, in) matrix: in every 4 consecutive inputs of a row,
    the 2 largest |w| kept (ties: the earlier position)."""
    groups = weight.abs().reshape(-1, 4)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order[:, :2], True)
    return keep.reshape(weight.shape)


def two_four_masked(weight):
    """`weight` with the 50% 2:4 magnitude mask of its (out, in·k·k) matrix, padded with zeros to the
    shape the 2:4 kernels take (rows: multiple of 32, columns: multiple of 64); (padded, weight)."""
    w = weight.detach().reshape(weight.shape[0], -1)
    padded = w.new_zeros(-(-w.shape[0] // 32) * 32, -(-w.shape[1] // 64) * 64)
    padded[:w.shape[0], :w.shape[1]] = w
    padded *= two_four_mask(padded)
    return padded, padded[:w.shape[0], :w.shape[1]].reshape(weight.shape).clone()


class SemiStructured(nn.Module):
    """A Conv2d (groups 1, as unfold + matrix product) or Linear on a 2:4 semi-structured weight:
    out = W (2:4 sparse, padded) × input columns (zero-padded to match)."""

    def __init__(self, module, to_sparse):
        super().__init__()
        padded, _ = two_four_masked(module.weight)
        self.weight = nn.Parameter(to_sparse(padded), requires_grad=False)
        self.bias = module.bias
        self.out_features, self.k = module.weight.shape[0], module.weight[0].numel()
        self.conv = isinstance(module, nn.Conv2d)
        if self.conv:
            self.kernel_size, self.stride, self.padding, self.dilation = (
                module.kernel_size, module.stride, module.padding, module.dilation)

    def forward(self, x):
        if self.conv:
            n, _, h, w = x.shape
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
            rows = cols.transpose(0, 1).reshape(self.k, -1)  # (C·k·k, N·L)
        else:
            rows = x.t()
        m = rows.shape[1]
        k_pad, m_pad = self.weight.shape[1], -(-m // 64) * 64
        out = torch.mm(self.weight, F.pad(rows, (0, m_pad - m, 0, k_pad - self.k)))[:self.out_features, :m]
        if not self.conv:
            out = out.t()
            return out if self.bias is None else out + self.bias
        oh, ow = _conv_out_size(self, h, w)
        out = out.reshape(self.out_features, n, oh, ow).transpose(0, 1)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def _prunable_layers(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def semi_structured_network(model, dtype=torch.float16, to_sparse=None):
    """(2:4 network, its dense reference): copies of `model` in `dtype` with every Conv2d and Linear
    on the 50% 2:4 magnitude mask of its weight, the first on PyTorch's 2:4 semi-structured kernels
    (`to_sparse`, default torch.sparse.to_sparse_semi_structured), the second dense with the same
    masked weights (what the first must compute)."""
    if to_sparse is None:
        from torch.sparse import to_sparse_semi_structured as to_sparse
    net, ref = copy.deepcopy(model).to(dtype).eval(), copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for name, module in _prunable_layers(ref):
            module.weight.copy_(two_four_masked(module.weight)[1])
    for name, module in _prunable_layers(net):
        _replace(net, name, SemiStructured(module, to_sparse))
    return net, ref


# ---------------------------------------------------------------------------------------------
# Measurements

class _LiveTensors(TorchDispatchMode):
    """Counts the bytes of every tensor an op returns from its creation until it is freed."""

    def __init__(self, resident):
        super().__init__()
        self.live = self.peak = sum(tensor_bytes(t) for t in resident)
        # storage address -> [bytes, live tensors viewing it]; the resident tensors (weights, input)
        # are counted once above, so an op's view of them (a transposed weight) adds nothing
        self.refs = {t.untyped_storage().data_ptr(): [0, float("inf")] for t in _strided_parts(resident)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self._track(t)
        return out

    def _track(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.refs:
            self.refs[key] = [storage.nbytes(), 0]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key][1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key):
        ref = self.refs.get(key)
        if ref is None:
            return
        ref[1] -= 1
        if ref[1] == 0:
            self.live -= ref[0]
            del self.refs[key]


def _strided_parts(tensors):
    for t in tensors:
        yield from ((t.crow_indices(), t.col_indices(), t.values()) if t.layout == torch.sparse_csr else (t,))


def tensor_bytes(t):
    if t.layout == torch.sparse_csr:
        return sum(x.numel() * x.element_size() for x in (t.crow_indices(), t.col_indices(), t.values()))
    return t.numel() * t.element_size()


@torch.inference_mode()
def peak_forward_bytes(model, x):
    """Peak bytes of tensor memory one forward pass of `x` holds: the network's parameters and
    buffers, the input, and the most op outputs alive at any one time."""
    mode = _LiveTensors([*model.parameters(), *model.buffers(), x])
    with mode:
        out = model(x)
    del out
    return mode.peak


@torch.inference_mode()
def latencies_in_turns(runs, repeats, warmup):
    """Median seconds of `repeats` forward passes per (model, input) of `runs`, after `warmup`
    passes, the models taking turns in every repeat."""
    sync = torch.cuda.synchronize if runs[0][1].device.type == "cuda" else (lambda: None)
    times = [[] for _ in runs]
    for r in range(warmup + repeats):
        for i, (m, x) in enumerate(runs):
            sync()
            t0 = time.perf_counter()
            m(x)
            sync()
            if r >= warmup:
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def batch_of(images, n):
    """The first `n` images, the set repeated when it holds fewer (timing needs the shape only)."""
    reps = -(-n // len(images))
    return images.repeat(reps, 1, 1, 1)[:n].contiguous()


@torch.inference_mode()
def max_logit_diff(reference, model, images, dtype=torch.float32):
    ref = reference(images.to(dtype)).float()
    return float((model(images.to(dtype)).float() - ref).abs().max())


def nonzero_flops(model):
    """Forward FLOPs per image counting nonzero weights only (as the leaderboard counts a masked
    network): each Conv2d/Linear layer's FLOPs times the fraction of its weights that are nonzero."""
    weights = dict(model.named_parameters())
    return sum(f * float((weights[n] != 0).float().mean()) for n, f in layer_flops(model).items())


def _runnable(ckpt, masked, form, device):
    """(row, network to run or None) of one form of a checkpoint on `device`."""
    row = {"form": form, "device": device.type, "note": ""}
    if form == "semi_structured_24":
        why = semi_structured_unavailable(device)
        if why is not None:
            return {**row, "note": why}, None
        try:  # the 2:4 kernels' own limits (shapes, dtypes) differ between PyTorch versions
            net, _ = semi_structured_network(masked)
            with torch.inference_mode():
                net(torch.zeros(1, 3, 32, 32, device=device, dtype=torch.float16))
        except (RuntimeError, ValueError, NotImplementedError) as e:
            return {**row, "note": f"unavailable: the 2:4 kernels refused this network ({str(e).splitlines()[0][:100]})"}, None
        return {**row, "note": "the dense network with a 50% 2:4 magnitude mask on every Conv2d and Linear, fp16: "
                               "another network, its logits compared with that masked network's"}, net
    stored = deployable(masked, form, model_args(ckpt))
    row["disk_mb"] = saved_bytes(stored) / MB
    if form == "sparse_csr":
        return {**row, "note": "stored form: loaded, it is densified (runs as dense_zeros) or run as sparse_mm"}, None
    if form == "sparse_mm":
        if device.type != "cpu":
            return {**row, "note": "not timed: torch.sparse.mm is timed on the CPU only"}, None
        return row, sparse_kernel_network(stored, device)
    net = model_from_checkpoint(ckpt, device).eval()
    net.load_state_dict(densified_state(stored))  # the stored form, loaded back
    return row, net


def measure_network(ckpt, dense_ckpt, images, device, repeats, warmup, threads, forms=FORMS):
    """Rows (one per form of `forms` the checkpoint has) of one checkpoint on `device`: latency at
    batch 1 and 128 timed in turns with the dense network (`dense_ckpt`), peak forward memory,
    disk size and the largest logit difference from the masked network on `images`."""
    device = torch.device(device)
    images = images.to(device)
    masked = masked_network(ckpt, device)
    dense = masked_network(dense_ckpt, device)
    rows, nets = [], {}
    for form in (f for f in forms_of(ckpt) if f in forms):
        row, net = _runnable(ckpt, masked, form, device)
        rows.append({**row, "threads": threads, "repeats": repeats, "warmup": warmup})
        if net is not None:
            nets[form] = net
    flops, dense_flops = nonzero_flops(masked), nonzero_flops(dense)
    for row in rows:
        if row["form"] != "semi_structured_24":
            row["flops"], row["dense_flops"] = flops, dense_flops
    dtype = {f: torch.float16 if f == "semi_structured_24" else torch.float32 for f in nets}
    for batch in (1, 128):
        x = batch_of(images, batch)
        medians = latencies_in_turns([*((nets[f], x.to(dtype[f])) for f in nets), (dense, x)], repeats, warmup)
        for row in rows:
            f = row["form"]
            if f in nets:
                row[f"latency_ms_b{batch}"] = 1e3 * medians[list(nets).index(f)]
                row[f"dense_latency_ms_b{batch}"] = 1e3 * medians[-1]
                row["peak_mem_mb" + ("_b1" if batch == 1 else "")] = peak_forward_bytes(nets[f], x.to(dtype[f])) / MB
    for row in rows:
        f = row["form"]
        if f in nets:
            ref = semi_structured_network(masked)[1] if f == "semi_structured_24" else masked
            row["max_abs_logit_diff"] = max_logit_diff(ref, nets[f], images[:CHECK_IMAGES], dtype[f])
            row["speedup_b128"] = row["dense_latency_ms_b128"] / row["latency_ms_b128"]
    return rows
