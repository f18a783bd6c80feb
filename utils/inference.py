"""The fastest form of a network for evaluation: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be folded
into the convolution's weights and bias: w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β. The
folded network computes the same function (up to float rounding; tests/test_inference.py
checks it against the unfolded one) with one pass over each activation fewer per layer.

`folded(model)` keeps one inference copy per model (built once: the conv→BatchNorm pairs are
found by tracing the model with torch.fx, each folded BatchNorm replaced by an identity) and
refreshes its weights from the live model on every call, so it always evaluates the current
weights, masks and running statistics. A model torch.fx cannot trace is evaluated unfolded.
"""
import copy
import weakref

import torch
import torch.nn as nn

_FOLDED = weakref.WeakKeyDictionary()  # model -> _FoldedCopy


def conv_bn_pairs(model):
    """[(conv name, BatchNorm name)] where a BatchNorm2d reads only a Conv2d's output and that
    output feeds nothing else; [] when torch.fx cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001  (any tracing failure: evaluate unfolded)
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d) and len(source.users) == 1):
            pairs.append((source.target, node.target))
    return pairs


def _replace(root, name, module):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class _FoldedCopy:
    def __init__(self, model):
        self.pairs = conv_bn_pairs(model)
        self.signature = _signature(model)
        self.module = copy.deepcopy(model)
        for conv_name, bn_name in self.pairs:
            conv = self.module.get_submodule(conv_name)
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device,
                                                     dtype=conv.weight.dtype))
            _replace(self.module, bn_name, nn.Identity())
        self.module.eval().requires_grad_(False)
        self.compiled = None

    @torch.no_grad()
    def refresh(self, model):
        """Copy the live weights in; fold each BatchNorm's eval-mode affine map into its conv."""
        source = dict(model.state_dict())
        for name, tensor in self.module.state_dict().items():
            if name in source:
                tensor.copy_(source[name])
        for conv_name, bn_name in self.pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            target = self.module.get_submodule(conv_name)
            target.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            target.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        return self.module


def _signature(model):
    return tuple((n, tuple(t.shape), t.device, t.dtype) for n, t in model.state_dict().items())


def folded(model, compile=False):
    """The BatchNorm-folded inference copy of `model` with its current weights (eval mode, no
    gradients); with `compile`, that copy torch.compiled (compiled once per model)."""
    copy_ = _FOLDED.get(model)
    if copy_ is None or copy_.signature != _signature(model):
        copy_ = _FOLDED[model] = _FoldedCopy(model)
    module = copy_.refresh(model)
    if not compile:
        return module
    if copy_.compiled is None:
        copy_.compiled = torch.compile(module, dynamic=False)
    return copy_.compiled
