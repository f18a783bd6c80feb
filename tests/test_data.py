import pickle

import pytest
import torch

from data import CifarSplit, augment, load_cifar10
from utils.errors import UserError


def test_reads_the_real_slice(data_dir):
    train, test = load_cifar10(data_dir, download=False)
    assert (len(train), len(test)) == (5085, 1017)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    with open(data_dir / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    # the first image of batch 2 follows the 1017 of batch 1, channel-major as in the archive
    assert torch.equal(train.images[1017].flatten(), torch.as_tensor(batch["data"][0]))
    assert train.labels[1017].item() == batch["labels"][0]
    sub, _ = load_cifar10(data_dir, download=False, train_subset=100, test_subset=10)
    assert len(sub) == 100 and torch.equal(sub.images, train.images[:100])


def test_missing_dataset_and_oversized_subset_are_user_errors(tmp_path, data_dir):
    with pytest.raises(UserError, match="not found.*--no-download"):
        load_cifar10(tmp_path, download=False)
    with pytest.raises(UserError, match="--train-subset 6000 is larger than the 5085"):
        load_cifar10(data_dir, download=False, train_subset=6000)


def position_images(n):
    """Images whose pixels encode their own row (ch 0) and column (ch 1), 1-based; ch 2 = 255."""
    ar = torch.arange(1, 33, dtype=torch.uint8)
    img = torch.stack([ar[:, None].expand(32, 32), ar[None, :].expand(32, 32),
                       torch.full((32, 32), 255, dtype=torch.uint8)])
    return img.expand(n, 3, 32, 32).clone()


def recover(out):
    """(dy, dx, flipped) of each augmented position image, read back from a kept pixel."""
    dy, dx, flip = [], [], []
    for img in out:
        i, j = (img[2] == 255).nonzero()[0].tolist()
        row, col = img[0, i, j].item() - 1, img[1, i, j].item() - 1
        kept_cols = img[1, i, :][img[2, i, :] == 255].long()  # at least 28 per row
        flipped = bool(kept_cols.diff().lt(0).all())
        dy.append(row - i + 4)
        dx.append(col + j + 4 - 31 if flipped else col - j + 4)
        flip.append(flipped)
    return torch.tensor(dy), torch.tensor(dx), torch.tensor(flip)


def test_augmentation_matches_randomcrop_pad4_and_flip():
    images = position_images(4000)
    out = augment(images, torch.Generator().manual_seed(0))
    dy, dx, flip = recover(out)
    assert sorted(set(dy.tolist())) == list(range(9)) and sorted(set(dx.tolist())) == list(range(9))
    counts = torch.bincount(dy * 9 + dx, minlength=81).float()
    assert counts.min() > 4000 / 81 * 0.5  # every one of the 81 offsets drawn, roughly uniformly
    assert 0.45 < flip.float().mean().item() < 0.55
    # every kept pixel is the source pixel the drawn offset and flip point at
    for k in range(0, 4000, 397):
        rows = torch.arange(32) + dy[k] - 4
        cols = torch.arange(32) + dx[k] - 4
        cols = cols.flip(0) if flip[k] else cols
        inside = ((rows >= 0) & (rows <= 31))[:, None] & ((cols >= 0) & (cols <= 31))[None, :]
        assert torch.equal(out[k, 2] == 255, inside)
        assert torch.equal(out[k, 0][inside], (rows[:, None].expand(32, 32)[inside] + 1).to(torch.uint8))
        assert torch.equal(out[k, 1][inside], (cols[None, :].expand(32, 32)[inside] + 1).to(torch.uint8))
        assert out[k][:, ~inside].eq(0).all()  # zero padding, before any normalisation


def test_batches_keep_labels_with_their_images_and_the_last_partial_batch():
    n = 300
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = (labels * 20 + 5).to(torch.uint8)[:, None, None]  # label written in the pixels
    split = CifarSplit(images, labels)
    sizes, seen = [], []
    for x, y in split.batches(128, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)):
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert 0 <= x.min() and x.max() <= 1
        written = (x[:, 0].amax(dim=(1, 2)) * 255).round().long()
        assert torch.equal((written - 5) // 20, y)
        sizes.append(len(y))
        seen.append(y)
    assert sizes == [128, 128, 44]
    assert sorted(torch.cat(seen).tolist()) == sorted(labels.tolist())


def test_seeded_order_repeats_and_differs_by_seed(data_dir):
    train, _ = load_cifar10(data_dir, download=False, train_subset=256)

    def first_batch(seed):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        return next(train.batches(64, g1, g2))

    a, b, c = first_batch(0), first_batch(0), first_batch(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
