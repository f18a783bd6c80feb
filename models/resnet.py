"""CIFAR ResNets of He et al. 2016 (depth 6n+2: resnet20/32/56), readable on one screen.

Three stages of n basic blocks with 16/32/64 channels. The per-channel normalisation is the
model's first operation (buffers, not parameters), so every caller feeds [0, 1] pixels.
`widths` sets the inner width of every block (the output of its first conv): channel-pruned,
compact networks are built from it; the residual stream keeps its stage width.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
STAGE_WIDTHS = (16, 32, 64)


class Normalize(nn.Module):
    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class PadShortcut(nn.Module):
    """Option A of He et al.: parameter-free identity, subsampled and zero-padded in channels."""

    def __init__(self, stride, extra_channels):
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_width, inner_width, out_width, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, inner_width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_width)
        self.conv2 = nn.Conv2d(inner_width, out_width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_width)
        self.shortcut = nn.Sequential()  # identity when the shape is unchanged
        if stride != 1 or in_width != out_width:
            if shortcut == "A":
                self.shortcut = PadShortcut(stride, out_width - in_width)
            else:  # "B": 1x1 conv + BatchNorm, as facebookresearch/open_lth
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_width, out_width, 1, stride, bias=False), nn.BatchNorm2d(out_width))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth=20, num_classes=10, shortcut="B", widths=None):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        block_out = [w for w in STAGE_WIDTHS for _ in range(n)]
        widths = list(block_out if widths is None else widths)
        if len(widths) != 3 * n or min(widths) < 1:
            raise ValueError(f"widths must be {3 * n} positive ints, got {widths}")
        self.depth, self.shortcut_type, self.widths = depth, shortcut, widths

        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_width, blocks = 16, iter(range(3 * n))
        for stage, out_width in enumerate(STAGE_WIDTHS):
            layer = []
            for i in range(n):
                b = next(blocks)
                stride = 2 if stage > 0 and i == 0 else 1
                layer.append(BasicBlock(in_width, widths[b], out_width, stride, shortcut))
                in_width = out_width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.linear = nn.Linear(64, num_classes)

        for m in self.modules():  # He et al. 2015 init for weights; BatchNorm γ=1, β=0
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def blocks(self):
        """The residual blocks in order (their inner widths are `self.widths`)."""
        return [b for layer in (self.layer1, self.layer2, self.layer3) for b in layer]

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
