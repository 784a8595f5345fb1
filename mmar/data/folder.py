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

from mmar.data.media_source import ImageSource
from mmar.images import open_image

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
EXAMPLE_LINE = '{"file_name": "0001.png", "text": "a red circle at the top left"}'
EXAMPLE_FILES = {"audio": "0001.wav", "video": "0001.mp4"}  # the example line's file, per medium


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Open an image, resize its shorter side to `size`, centre-crop -> (3, size, size) float in [-1, 1]."""
    return fit_square(open_image(path), size)


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


def metadata_entry(root: Path, line: str) -> tuple[Path, str]:
    """One metadata.jsonl line -> (existing file inside `root`, caption), or ValueError/OSError saying why not.

    Shared by every folder source (images here, audio in audio_folder.py)."""
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
    return path, text


def usable_entries(root: Path, validate, limit: int | None, name: str, medium: str) -> tuple[list, int]:
    """-> (the first `limit` entries of root/metadata.jsonl that `validate(root, line)` accepts, number skipped).

    Skipped entries are reported in ONE warning line (with the first reason); none usable is a
    ValueError that says what a line must look like."""
    metadata = root / METADATA
    example = EXAMPLE_LINE.replace("0001.png", EXAMPLE_FILES.get(medium, "0001.png"))
    if not metadata.is_file():
        raise FileNotFoundError(
            f"no {METADATA} in {root}: put the {medium} files in that folder and write one line per "
            f"file to {METADATA}, like {example}")
    items, skipped, first_reason = [], 0, None
    with open(metadata, "rb") as lines:  # line by line, so one undecodable line is skipped, not the file
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            if limit is not None and len(items) >= limit:
                break
            try:
                items.append(validate(root, raw.decode("utf-8")))
            except Exception as error:  # noqa: BLE001 - decoders raise SyntaxError, struct.error, RuntimeError, ...
                skipped += 1
                first_reason = first_reason or f"line {number}: {error}"
    if skipped:
        logger.warning("%s %s: skipped %d unusable entr%s (first: %s)", name, root, skipped,
                       "y" if skipped == 1 else "ies", first_reason)
    if not items:
        raise ValueError(
            f"no usable ({medium}, caption) pair in {root}: {METADATA} needs lines like {example} "
            f"naming readable {medium} files in the folder ({skipped} skipped"
            + (f", first: {first_reason})" if first_reason else ")"))
    return items, skipped


def _validate(root: Path, line: str) -> tuple[Path, str]:
    """One metadata line -> (image path, caption), or ValueError/OSError saying why it is unusable."""
    path, text = metadata_entry(root, line)
    with Image.open(path) as image:
        image.verify()  # structure and checksums
    open_image(path)  # a full decode catches truncated data that verify misses; refuses huge images first
    return path, text


class ImageFolder(ImageSource):
    """Items: (image (3, size, size) float in [-1, 1], caption) from `root/metadata.jsonl`.

    `limit` keeps the first usable entries only (and validates only those).
    """


    @classmethod
    def build(cls, *, size: int, num_items: int | None, seed: int, path: str | None, **_: object) -> "ImageFolder":
        if path is None:
            raise ValueError("the folder source needs path= a folder with metadata.jsonl and its images "
                             "(--set data.path=DIR)")
        return cls(path, size=size, limit=num_items)

    def __init__(self, root: str | os.PathLike, size: int = 32, limit: int | None = None) -> None:
        self.root, self.size = Path(root), size
        self.items, self.num_skipped = usable_entries(self.root, _validate, limit, "ImageFolder", "image")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, text = self.items[index]
        return load_image(path, self.size), text
