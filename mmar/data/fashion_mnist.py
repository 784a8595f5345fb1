"""Fashion-MNIST (Xiao et al. 2017) from the Debian package `dataset-fashion-mnist`, with captions.

The package installs the four gzipped IDX files (LeCun's MNIST format) under
/usr/share/datasets/fashion-mnist (`dpkg -L dataset-fashion-mnist`). Nothing is downloaded: when
the files are missing the error says which package to install.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from mmar.data.media_source import ImageSource

PACKAGE = "dataset-fashion-mnist"
#: where `dpkg -L dataset-fashion-mnist` puts the IDX files; MMAR_FASHION_MNIST_DIR overrides it
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX: 0x0803 = uint8 rank 3, 0x0801 = uint8 rank 1


class FashionMNISTNotFound(FileNotFoundError):
    """The Fashion-MNIST IDX files are not where the Debian package puts them."""


def caption(label: int) -> str:
    return f"a photo of a {CLASSES[label]}"


def _find(root: Path, name: str) -> Path:
    """`name` or `name.gz` under root, or a one-line FashionMNISTNotFound naming the package."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise FashionMNISTNotFound(
        f"Fashion-MNIST file {name}.gz not found in {root}: install the Debian package {PACKAGE} "
        f"(sudo apt-get install -y {PACKAGE}) or pass root= the folder holding its IDX files")


def read_idx(path: Path, magic: int, limit: int | None = None) -> np.ndarray:
    """Read a uint8 IDX file (gzipped or not) -> array (N, *dims), at most `limit` items."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        found, count = struct.unpack(">II", stream.read(8))
        if found != magic:
            raise ValueError(f"{path}: not an IDX file of the expected kind (magic {found}, expected {magic})")
        rank = (magic & 0xFF) - 1  # the low byte counts dimensions, the item count included
        dims = struct.unpack(f">{rank}I", stream.read(4 * rank))
        count = count if limit is None else min(count, limit)
        item = int(np.prod(dims, dtype=np.int64))
        data = stream.read(count * item)  # stop early: a limit reads only what it needs
    if len(data) != count * item:
        raise ValueError(f"{path}: truncated ({len(data)} bytes, expected {count * item})")
    return np.frombuffer(data, dtype=np.uint8).reshape(count, *dims)  # (N, *dims)


class FashionMNIST(ImageSource):
    """Items: (image (3, size, size) float in [-1, 1], "a photo of a {class}").

    The 28x28 grey images are resized bilinearly (antialiased) and replicated to three channels.
    `limit` keeps the first items only (and reads only those); `root` overrides where the files are.
    """


    @classmethod
    def build(cls, *, size: int, num_items: int | None, seed: int, path: str | None, **_: object) -> "FashionMNIST":
        return cls(split="train", size=size, limit=num_items, root=path)

    def __init__(self, split: str = "train", size: int = 32, limit: int | None = None,
                 root: str | os.PathLike | None = None) -> None:
        if split not in FILES:
            raise ValueError(f"unknown split {split!r}; known: {sorted(FILES)}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        root = Path(root if root is not None else os.environ.get("MMAR_FASHION_MNIST_DIR", DEFAULT_ROOT))
        image_file, label_file = (_find(root, name) for name in FILES[split])
        self.split, self.size = split, size
        self.images = read_idx(image_file, IMAGE_MAGIC, limit)  # (N, 28, 28) uint8
        self.labels = read_idx(label_file, LABEL_MAGIC, limit)  # (N,) uint8
        if len(self.images) != len(self.labels):
            raise ValueError(f"{root}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        grey = torch.from_numpy(self.images[index].astype(np.float32))[None, None]  # (1, 1, 28, 28)
        if grey.shape[-1] != self.size or grey.shape[-2] != self.size:
            grey = torch.nn.functional.interpolate(grey, size=(self.size, self.size), mode="bilinear",
                                                   align_corners=False, antialias=True)  # (1, 1, S, S)
        image = (grey[0] / 127.5 - 1).clamp(-1, 1).expand(3, -1, -1).contiguous()  # (3, S, S)
        return image, caption(int(self.labels[index]))
