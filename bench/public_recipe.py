"""The common public CIFAR-10 recipe, as the comparison point for our loop's speed and accuracy.

torchvision RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize on PIL
images in a DataLoader with 2 workers, NCHW float32, SGD, `.item()` per step: what most public
ResNet-20 repositories (e.g. akamaster/pytorch_resnet_cifar10) run. It reads the same images and
builds the same ResNet-20 so that only the data path and the training step differ.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script (serve mode)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from models import get_model  # noqa: E402
from models.resnet import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402


class ArrayDataset(Dataset):
    def __init__(self, images_uint8, labels, transform):
        self.images = images_uint8.permute(0, 2, 3, 1).numpy()  # HWC, as torchvision's CIFAR10
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def loaders(train, test, batch_size=128, workers=2, seed=0):
    normalize = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(ArrayDataset(train.images.cpu(), train.labels.cpu(), train_tf), batch_size,
                              shuffle=True, num_workers=workers, generator=g,
                              persistent_workers=workers > 0)
    test_loader = DataLoader(ArrayDataset(test.images.cpu(), test.labels.cpu(), test_tf), 1000,
                             num_workers=workers, persistent_workers=workers > 0)
    return train_loader, test_loader


def public_model(arch="resnet20", seed=0):
    """Our ResNet with its built-in normalisation switched off (the loader normalises)."""
    torch.manual_seed(seed)
    model = get_model(arch)
    model.normalize.mean.zero_()
    model.normalize.std.fill_(1.0)
    return model


def train_epoch(model, optimizer, loader, max_steps=None):
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(loader):
        if step == max_steps:
            break
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), seen


@torch.no_grad()
def evaluate(model, loader):
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        seen += len(y)
    return 100.0 * correct / seen


def train(train_split, test_split, epochs, milestones, seed=0, lr=0.1, batch_size=128, workers=2):
    """The whole public recipe; returns the list of per-epoch (seconds, test accuracy)."""
    model = public_model(seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
    train_loader, test_loader = loaders(train_split, test_split, batch_size, workers, seed)
    history = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        train_epoch(model, optimizer, train_loader)
        schedule.step()
        accuracy = evaluate(model, test_loader)
        history.append((time.perf_counter() - t0, accuracy))
    return history


def serve(args):
    """Timing server for bench/throughput.py: builds the recipe once, then for each stdin line
    `<steps>` prints one JSON line {"step_seconds", "epoch_seconds"} (steps timed, then one full
    epoch plus the test evaluation). Runs in its own process so that it keeps PyTorch's default
    OpenMP settings, as users run it."""
    import json
    import sys

    from data import load_cifar10

    train, test = load_cifar10(args.data_dir, download=False, train_subset=args.train_subset,
                               test_subset=args.test_subset)
    model = public_model(args.arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    train_loader, test_loader = loaders(train, test, args.batch_size)
    train_epoch(model, optimizer, train_loader, max_steps=args.warmup)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        steps = int(line)
        t0 = time.perf_counter()
        train_epoch(model, optimizer, train_loader, max_steps=steps)
        step_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_epoch(model, optimizer, train_loader)
        evaluate(model, test_loader)
        print(json.dumps({"step_seconds": step_seconds, "epoch_seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="timing server for bench/throughput.py --compare-public")
    for flag, kind, default in (("--data-dir", str, "data"), ("--train-subset", int, 0), ("--test-subset", int, 0),
                                ("--arch", str, "resnet20"), ("--batch-size", int, 128), ("--lr", float, 0.1),
                                ("--warmup", int, 5)):
        p.add_argument(flag, type=kind, default=default)
    serve(p.parse_args())
