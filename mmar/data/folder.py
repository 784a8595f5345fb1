"""A user's captioned images in the HuggingFace "folder" convention (datasets' ImageFolder).

    my_images/
      metadata.jsonl      {"file_name": "0001.png", "text": "a red circle at the top left"}
      0001.png            (file_name may also name a subfolder: "cats/0002.jpg")

Every entry is checked when the dataset is built (the file opens, verifies and decodes), so
iteration never meets a broken file: bad entries are skipped, counted in `num_skipped`, and
reported in ONE warning line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
EXAMPLE_LINE = '{"file_name": "0001.png", "text": "a red circle at the top left"}'


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Open an image, resize its shorter side to `size`, centre-crop -> (3, size, size) float in [-1, 1]."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    return fit_square(image, size)


def fit_square(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB PIL image, shorter side resized to `size` (bicubic), centre-cropped -> (3, size, size) in [-1, 1]."""
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(resized, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (size, size, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1  # (3, size, size)


def _validate(root: Path, line: str) -> tuple[Path, str]:
    """One metadata line -> (image path, caption), or ValueError/OSError saying why it is unusable."""
    entry = json.loads(line)
    if not isinstance(entry, dict):
        raise ValueError("line is not a JSON object")
    file_name, text = entry.get("file_name"), entry.get("text")
    if not isinstance(file_name, str) or not file_name:
        raise ValueError('no "file_name" string')
    if not isinstance(text, str):
        raise ValueError(f'{file_name}: no "text" string')
    path = (root / file_name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{file_name}: outside the folder")
    if not path.is_file():
        raise FileNotFoundError(f"{file_name}: no such file")
    with Image.open(path) as image:
        image.verify()  # structure and checksums
    with Image.open(path) as image:
        image.load()  # a full decode catches truncated data that verify misses
    return path, text


class ImageFolder(torch.utils.data.Dataset):
    """Items: (image (3, size, size) float in [-1, 1], caption) from `root/metadata.jsonl`.

    `limit` keeps the first usable entries only (and validates only those).
    """

    modality = "image"

    @classmethod
    def data_shape(cls, *, size: int, **_: object) -> tuple[int, int, int]:
        return (3, size, size)

    @classmethod
    def build(cls, *, size: int, num_items: int | None, seed: int, path: str | None, **_: object) -> "ImageFolder":
        if path is None:
            raise ValueError("the folder source needs path= a folder with metadata.jsonl and its images "
                             "(--set data.path=DIR)")
        return cls(path, size=size, limit=num_items)

    def __init__(self, root: str | os.PathLike, size: int = 32, limit: int | None = None) -> None:
        self.root, self.size = Path(root), size
        metadata = self.root / METADATA
        if not metadata.is_file():
            raise FileNotFoundError(
                f"no {METADATA} in {self.root}: put the images in that folder and write one line per "
                f"image to {METADATA}, like {EXAMPLE_LINE}")
        self.items: list[tuple[Path, str]] = []
        self.num_skipped = 0
        first_reason = None
        with open(metadata, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                if limit is not None and len(self.items) >= limit:
                    break
                try:
                    self.items.append(_validate(self.root, line))
                except Exception as error:  # noqa: BLE001 - PIL raises SyntaxError, struct.error, ... on bad files
                    self.num_skipped += 1
                    first_reason = first_reason or f"line {number}: {error}"
        if self.num_skipped:
            logger.warning("ImageFolder %s: skipped %d unusable entr%s (first: %s)", self.root, self.num_skipped,
                           "y" if self.num_skipped == 1 else "ies", first_reason)
        if not self.items:
            raise ValueError(
                f"no usable (image, caption) pair in {self.root}: {METADATA} needs lines like {EXAMPLE_LINE} "
                f"naming readable images in the folder ({self.num_skipped} skipped"
                + (f", first: {first_reason})" if first_reason else ")"))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, text = self.items[index]
        return load_image(path, self.size), text
