"""Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it: IDX files (gzipped or not) and its class names.

IDX: big-endian magic (0x00000803 images, 0x00000801 labels), then the dimension sizes as int32, then uint8 data.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IDX_PREFIX = {"train": "train", "test": "t10k"}


def idx_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) IDX files of `split` (train | test) in `root`, gzipped or not; None when absent."""
    for suffix in (".gz", ""):
        images = root / f"{IDX_PREFIX[split]}-images-idx3-ubyte{suffix}"
        labels = root / f"{IDX_PREFIX[split]}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def read_idx(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, rows, cols), labels uint8 (n,)); ValueError when the files are not matching IDX data."""
    def raw(path: Path) -> bytes:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            return f.read()

    images, labels = raw(images_file), raw(labels_file)
    if images[:4] != b"\x00\x00\x08\x03" or labels[:4] != b"\x00\x00\x08\x01":
        raise ValueError(f"{images_file} / {labels_file} are not IDX image / label files")
    n, rows, cols = np.frombuffer(images, ">i4", 3, 4)
    if np.frombuffer(labels, ">i4", 1, 4)[0] != n or len(images) != 16 + n * rows * cols or len(labels) != 8 + n:
        raise ValueError(f"{images_file} and {labels_file} disagree on their size or are truncated")
    return (np.frombuffer(images, np.uint8, offset=16).reshape(n, rows, cols),
            np.frombuffer(labels, np.uint8, offset=8))
