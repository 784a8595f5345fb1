"""Data sources: each yields (media, caption str); images are (3, H, W) float in [-1, 1], video clips
(F, 3, H, W) float in [-1, 1] (frames first, as `mmar.media` writes them), audio (1, S).

`DATA_SOURCES` maps a name to its dataset class; each class declares its `modality` (the medium it
yields, checked against the tokenizer's), a `build` classmethod and a `data_shape` classmethod;
`make_source` builds one from the few settings a config carries. A new source is one file and one
line here. Procedural shapes (images), moving shapes (clips) and notes (audio) need nothing;
"speech" needs the Debian package `espeak-ng`; Fashion-MNIST needs `dataset-fashion-mnist`;
"folder" (images), "video_folder" (clips) and "audio_folder" read a user's folder in the
HuggingFace convention.
"""

from __future__ import annotations

import torch

from mmar.data.audio_folder import AudioFolder
from mmar.data.fashion_mnist import FashionMNIST
from mmar.data.folder import ImageFolder
from mmar.data.moving_shapes import MovingShapesDataset
from mmar.data.notes import NotesDataset
from mmar.data.shapes import ShapesDataset
from mmar.data.speech import SpeechDataset
from mmar.data.video_folder import VideoFolder

DATA_SOURCES: dict[str, type[torch.utils.data.Dataset]] = {
    "shapes": ShapesDataset,
    "fashion_mnist": FashionMNIST,
    "folder": ImageFolder,
    "notes": NotesDataset,
    "audio_folder": AudioFolder,
    "speech": SpeechDataset,
    "moving_shapes": MovingShapesDataset,
    "video_folder": VideoFolder,
}

#: each medium's built-in procedural source: the default data of a tokenizer or model of that medium
PROCEDURAL_SOURCES: dict[str, str] = {"image": "shapes", "video": "moving_shapes", "audio": "notes"}


def make_source(source: str, *, num_items: int | None, seed: int, path: str | None = None,
                **settings: object) -> torch.utils.data.Dataset:
    """Build the data source `source` from a data config's fields (each class's `build` says what it reads).

    shapes, notes: `num_items` procedural items drawn with `seed` (path unused).
    fashion_mnist: the first `num_items` training images (all if None); `path` overrides where the
    IDX files are. folder, audio_folder: the first `num_items` usable entries of the folder at `path`
(required).
    `settings` are the medium's own fields (`size` for images, ...); a source ignores the ones it
    does not read, so `make_source(**dataclasses.asdict(data_config))` fits every source.
    Real sources keep their file order; shuffling is the trainer's job (seeded by epoch).
    """
    if num_items is not None and num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    return source_class(source).build(num_items=num_items, seed=seed, path=path, **settings)


def source_data_shape(source: str, **settings: object) -> tuple[int, ...]:
    """The shape of one item (without batch) that `source` yields with these settings, e.g. (3, 32, 32)."""
    return tuple(source_class(source).data_shape(**settings))


def source_class(source: str) -> type[torch.utils.data.Dataset]:
    if source not in DATA_SOURCES:
        raise ValueError(f"unknown data source {source!r}; known: {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[source]


__all__ = ["DATA_SOURCES", "PROCEDURAL_SOURCES", "AudioFolder", "FashionMNIST", "ImageFolder", "MovingShapesDataset",
           "NotesDataset", "ShapesDataset", "SpeechDataset", "VideoFolder", "make_source", "source_class",
           "source_data_shape"]
