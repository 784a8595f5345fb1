"""Data sources: each yields (image (3, H, W) float in [-1, 1], caption str).

`DATA_SOURCES` maps a name to its dataset class; `make_source` builds one from the few settings a
config carries. Procedural shapes need nothing; Fashion-MNIST needs the Debian package
`dataset-fashion-mnist`; "folder" reads a user's folder in the HuggingFace convention.
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
    """Build the data source `name`.

    shapes: `num_items` procedural items drawn with `seed` (path unused).
    fashion_mnist: the first `num_items` training images (all if None); `path` overrides where the
    IDX files are. folder: the first `num_items` usable entries of the folder at `path` (required).
    Real sources keep their file order; shuffling is the trainer's job (seeded by epoch).
    """
    if name not in DATA_SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(DATA_SOURCES)}")
    if num_items is not None and num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    if name == "shapes":
        if num_items is None:
            raise ValueError("the shapes source needs num_items (it is procedural and unbounded)")
        return ShapesDataset(num_items=num_items, size=size, seed=seed)
    if name == "fashion_mnist":
        return FashionMNIST(split="train", size=size, limit=num_items, root=path)
    if path is None:
        raise ValueError("the folder source needs path= a folder with metadata.jsonl and its images")
    return ImageFolder(path, size=size, limit=num_items)


__all__ = ["DATA_SOURCES", "FashionMNIST", "ImageFolder", "ShapesDataset", "make_source"]
