"""OpenLTH's CIFAR VGG-16 with BatchNorm (the network of Frankle et al. 2021's CIFAR VGG runs).

Thirteen 3x3 convolutions (with bias) in five stages of 64, 128, 256, 512, 512 channels, each
followed by BatchNorm and ReLU, 2x2 max-pooling between stages (not after the last), a 2x2
average pool and one linear layer: 14.7 M parameters. The per-channel normalisation is the
model's first operation (buffers), as in `models.resnet`, so callers feed [0, 1] pixels.
Initialisation as OpenLTH's defaults for this model: He (Kaiming normal) conv and linear
weights, BatchNorm γ ~ U(0, 1) and β = 0; biases keep PyTorch's default.
"""
import torch.nn as nn
import torch.nn.functional as F

from models.resnet import Normalize

VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    def __init__(self, plan=VGG16_PLAN, num_classes=10):
        super().__init__()
        self.normalize = Normalize()
        layers, channels = [], 3
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBlock(channels, spec))
                channels = spec
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight)  # OpenLTH's batchnorm_init 'uniform'
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.layers(self.normalize(x))
        out = F.avg_pool2d(out, 2).flatten(1)
        return self.fc(out)
