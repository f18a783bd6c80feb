"""CIFAR-10 held on the device as uint8, with on-device augmentation and seeded batches.

The official python batches are read straight from `<data_dir>/cifar-10-batches-py/`. When that
folder is missing it is downloaded (official archive, MD5-checked by torchvision's helper) unless
`no_download`; a folder already there is read as it is, without checksum checks.

Augmentation is torchvision's `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`, drawn per
sample and per epoch, done for the whole split in two gathers on the device. Random numbers come
from CPU generators, so the same seed gives the same order and crops on every device.
"""
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PAD = 4


def download_cifar10(data_dir):
    """Download and extract the official archive into data_dir, atomically (rename at the end)."""
    from torchvision.datasets.utils import download_and_extract_archive

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        try:
            download_and_extract_archive(CIFAR10_URL, tmp, filename="cifar-10-python.tar.gz", md5=CIFAR10_MD5)
        except Exception as e:  # network or checksum failure: nothing half-written stays behind
            raise UserError(f"could not download CIFAR-10 into {data_dir} ({e}); put the official "
                            f"{FOLDER}/ folder there by hand and pass --data-dir") from None
        (Path(tmp) / FOLDER).rename(data_dir / FOLDER)


def read_batches(folder, files):
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except FileNotFoundError:
            raise UserError(f"{path} is missing: delete {folder} and run again to download CIFAR-10") from None
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise UserError(f"{path} is not a CIFAR-10 python batch ({e}); delete {folder} "
                            "and run again to download it") from None
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _take(images, labels, n, split, flag):
    if n < 0:
        raise UserError(f"{flag} must be >= 0, got {n}")
    if n > len(labels):
        raise UserError(f"{flag} {n} is larger than the {len(labels)} {split} images available; "
                        f"pass {flag} {len(labels)} or less (0 = all)")
    return (images[:n], labels[:n]) if n else (images, labels)


def load_cifar10(data_dir="data", download=True, train_subset=0, test_subset=0, device="cpu"):
    """Return (train, test) as `CifarSplit`s on `device`."""
    folder = Path(data_dir) / FOLDER
    if not folder.is_dir():
        if not download:
            raise UserError(f"CIFAR-10 not found in {folder}; run without --no-download to fetch "
                            "it, or pass --data-dir pointing at the folder that holds it")
        download_cifar10(data_dir)
    train = _take(*read_batches(folder, TRAIN_FILES), train_subset, "training", "--train-subset")
    test = _take(*read_batches(folder, TEST_FILES), test_subset, "test", "--test-subset")
    return CifarSplit(*train, device), CifarSplit(*test, device)


def load_from_config(data_config, device):
    return load_cifar10(data_config.data_dir, not data_config.no_download,
                        data_config.train_subset, data_config.test_subset, device)


def augment(images, generator):
    """Random crop with zero padding 4 and horizontal flip, per sample, in two gathers.

    `images` is uint8 (N, 3, 32, 32) on any device; the offsets and flips are drawn on the CPU
    from `generator` (same distribution as torchvision: offsets uniform in 0..8, p(flip) = 0.5).
    """
    n, device = images.shape[0], images.device
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    dy, dx, flip = (t.to(device, non_blocking=True) for t in (dy, dx, flip))
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    ar = torch.arange(32, device=device)
    rows = (dy[:, None] + ar)[:, None, :, None].expand(n, 3, 32, 32 + 2 * PAD)
    cols = torch.where(flip[:, None], dx[:, None] + 31 - ar, dx[:, None] + ar)  # flip = read backwards
    cols = cols[:, None, None, :].expand(n, 3, 32, 32)
    return padded.gather(2, rows).gather(3, cols)  # two gathers: rows, then columns


class CifarSplit:
    """One split held on the device: uint8 images (N, 3, 32, 32) and int64 labels."""

    def __init__(self, images, labels, device="cpu"):
        self.images = images.to(device).contiguous()
        self.labels = labels.to(device)
        self.device = torch.device(device)

    def __len__(self):
        return len(self.labels)

    def batches(self, batch_size, order_gen=None, aug_gen=None):
        """Yield (pixels in [0, 1], channels_last float32; labels) for one pass.

        With `order_gen` the order is a seeded permutation; with `aug_gen` each image is
        augmented. The last partial batch is kept.
        """
        images = augment(self.images, aug_gen) if aug_gen is not None else self.images
        n = len(self)
        order = None
        if order_gen is not None:
            order = torch.randperm(n, generator=order_gen).to(self.device, non_blocking=True)
        for start in range(0, n, batch_size):
            if order is None:
                x, y = images[start:start + batch_size], self.labels[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                x, y = images[idx], self.labels[idx]
            yield to_pixels(x), y


def to_pixels(x_uint8):
    """uint8 images -> float [0, 1] pixels in channels_last memory format."""
    return x_uint8.contiguous(memory_format=torch.channels_last).float().div_(255)
