"""The LeNets of Frankle & Carbin 2019 on MNIST: LeNet-300-100 and LeNet-5.

Normalisation (MNIST mean/std, buffers) is the first operation, so callers feed [0, 1] pixels.
Weights are Gaussian Glorot (`xavier_normal_`), biases zero, as in Frankle & Carbin's code.
The last Linear is the output layer (pruned at half the rate of the others by IMP).
"""
import torch.nn as nn
import torch.nn.functional as F

from models.resnet import Normalize

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def glorot_init(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


class LeNet300(nn.Module):
    """784-300-100-classes fully connected, ReLU: 266,610 parameters with 10 classes."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD)
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        glorot_init(self)

    def forward(self, x):
        x = self.normalize(x).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """conv 6@5x5 (pad 2), max-pool, conv 16@5x5, max-pool, fc 120-84-classes, ReLU: 61,706
    parameters with 10 classes."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD)
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        glorot_init(self)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(self.normalize(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
