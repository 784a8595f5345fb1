"""Data sources: each yields (media, caption str); images are (3, H, W) float in [-1, 1].

`DATA_SOURCES` maps a name to its dataset class; each class declares its `modality` (the medium it
yields, checked against the tokenizer's) and a `build` classmethod; `make_source` builds one from
the few settings a config carries. A new source is one file and one line here. Procedural shapes
need nothing; Fashion-MNIST needs the Debian package `dataset-fashion-mnist`; "folder" reads a
user's folder in the HuggingFace convention.
"""

from __future__ import annotations

import torch

from mmar.data.fashion_mnist import FashionMNIST
from mmar.data.folder import ImageFolder
from mmar.data.shapes import ShapesDataset

DATA_SOURCES: dict[str, type[torch.utils.data.Dataset]] = {
    "shapes": ShapesDataset,
    "fashion_mnist": FashionMNIST,
    "folder": ImageFolder,
}


def make_source(name: str, *, size: int, num_items: int | None, seed: int,
                path: str | None = None) -> torch.utils.data.Dataset:
    """Build the data source `name` (each class's `build` says what it reads).

    shapes: `num_items` procedural items drawn with `seed` (path unused).
    fashion_mnist: the first `num_items` training images (all if None); `path` overrides where the
    IDX files are. folder: the first `num_items` usable entries of the folder at `path` (required).
    Real sources keep their file order; shuffling is the trainer's job (seeded by epoch).
    """
    if name not in DATA_SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(DATA_SOURCES)}")
    if num_items is not None and num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    return DATA_SOURCES[name].build(size=size, num_items=num_items, seed=seed, path=path)


__all__ = ["DATA_SOURCES", "FashionMNIST", "ImageFolder", "ShapesDataset", "make_source"]
