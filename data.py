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


# ---------------------------------------------------------------------------------------------
# MNIST: the official IDX files in torchvision's layout, `<data_dir>/MNIST/raw/`.

MNIST_FOLDER = Path("MNIST") / "raw"
# torchvision's first mirror; the files and their MD5 sums are the official ones (LeCun et al.)
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # split part -> (file stem, MD5 of the official .gz)
    "train_images": ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049
MNIST_SIDE = 28


def mnist_file(folder, stem):
    """The file holding `stem` in `folder`: plain IDX first, then `.gz`; None when neither."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def download_mnist_file(folder, stem, md5):
    """Download `<stem>.gz` into `folder`: to a temporary folder, MD5-checked, then renamed."""
    from torchvision.datasets.utils import check_integrity, download_url

    folder.mkdir(parents=True, exist_ok=True)
    name = stem + ".gz"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        try:
            download_url(MNIST_URL + name, tmp, filename=name, md5=md5)
            if not check_integrity(Path(tmp) / name, md5):
                raise RuntimeError("MD5 mismatch")
        except Exception as e:  # network or checksum failure: nothing half-written stays behind
            raise UserError(f"could not download {name} into {folder} ({e}); put the official "
                            f"MNIST files there by hand and pass --data-dir, or retry") from None
        (Path(tmp) / name).rename(folder / name)
    return folder / name


def _idx_bytes(path):
    """The raw IDX bytes of a plain or gzip-compressed file."""
    import gzip
    import zlib

    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"{path} is corrupt or truncated ({e}); delete it and run again "
                        "without --no-download to fetch it") from None


def read_idx(path, magic):
    """Parse one IDX file with every check: magic number, 28×28 images, the record count
    against the file size, labels 0–9. Returns uint8 (N, 1, 28, 28) images or int64 (N,) labels."""
    path = Path(path)
    data = _idx_bytes(path)
    fix = f"delete {path} and run again without --no-download to fetch it"
    header = 16 if magic == IDX_IMAGES_MAGIC else 8
    if len(data) < header:
        raise UserError(f"{path} is truncated ({len(data)} bytes, shorter than its IDX header); {fix}")
    dims = np.frombuffer(data[:header], dtype=">u4")
    if int(dims[0]) != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise UserError(f"{path} has IDX magic number {int(dims[0])}, not {magic} (MNIST {kind}); {fix}")
    count = int(dims[1])
    if magic == IDX_IMAGES_MAGIC and (int(dims[2]), int(dims[3])) != (MNIST_SIDE, MNIST_SIDE):
        raise UserError(f"{path} holds {int(dims[2])}x{int(dims[3])} images, not 28x28; {fix}")
    record = MNIST_SIDE * MNIST_SIDE if magic == IDX_IMAGES_MAGIC else 1
    if len(data) != header + count * record:
        raise UserError(f"{path}: its header says {count} records ({header + count * record} bytes) "
                        f"but it holds {len(data)} bytes (truncated or corrupt); {fix}")
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if magic == IDX_IMAGES_MAGIC:
        return torch.from_numpy(values.reshape(count, 1, MNIST_SIDE, MNIST_SIDE).copy())
    if count and int(values.max()) > 9:
        raise UserError(f"{path} holds label {int(values.max())}, outside 0-9; {fix}")
    return torch.from_numpy(values.astype(np.int64))


def read_mnist_split(folder, part, download):
    """(images, labels) of part 'train' or 'test', checked to have the same count."""
    out = []
    for kind, magic in (("images", IDX_IMAGES_MAGIC), ("labels", IDX_LABELS_MAGIC)):
        stem, md5 = MNIST_FILES[f"{part}_{kind}"]
        path = mnist_file(folder, stem)
        if path is None:
            if not download:
                raise UserError(f"MNIST file {folder / stem}(.gz) not found; run without --no-download "
                                "to fetch it, or pass --data-dir pointing at the folder holding MNIST/raw/")
            path = download_mnist_file(folder, stem, md5)
        out.append((path, read_idx(path, magic)))
    (image_path, images), (label_path, labels) = out
    if len(images) != len(labels):
        raise UserError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels; "
                        "delete both and run again without --no-download to fetch them")
    return images, labels


def load_mnist(data_dir="data", download=True, train_subset=0, test_subset=0, device="cpu"):
    """Return (train, test) as `MnistSplit`s on `device`, from `<data_dir>/MNIST/raw/`.

    Missing files are downloaded (official .gz, MD5-checked, atomic) unless not `download`; files
    already there are read as they are (plain or .gz), without checksum checks, but every file is
    parsed and checked whole before any subset is taken.
    """
    folder = Path(data_dir) / MNIST_FOLDER
    train = read_mnist_split(folder, "train", download)
    test = read_mnist_split(folder, "test", download)
    train = _take(*train, train_subset, "training", "--train-subset")
    test = _take(*test, test_subset, "test", "--test-subset")
    return MnistSplit(*train, device), MnistSplit(*test, device)


class MnistSplit(CifarSplit):
    """One MNIST split on the device: uint8 images (N, 1, 28, 28), int64 labels; the trainer's
    interface (`batches`, `len`, `.device`, `.images`, `.labels`), without augmentation."""

    def batches(self, batch_size, order_gen=None, aug_gen=None):
        """Yield (pixels in [0, 1], labels) for one pass, in a seeded order with `order_gen`.
        `aug_gen` is accepted for the trainer's sake and unused: MNIST is not augmented."""
        return super().batches(batch_size, order_gen, None)

    def subset(self, indices, label_offset=0):
        """A new split of the images at `indices` (a 1-D index tensor), labels minus `label_offset`."""
        indices = torch.as_tensor(indices, dtype=torch.long).to(self.images.device)
        return MnistSplit(self.images[indices], self.labels[indices] - label_offset, self.device)
