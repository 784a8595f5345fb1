"""Image files and tensors <-> PIL, and captioned sample grids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont


#: Images with more pixels (4096 x 4096) are refused from their header, before any decoding: a
#: 12000 x 12000 PNG would otherwise take ~2 GB to decode only to be shrunk to 32 x 32.
MAX_PIXELS = 4096 * 4096


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file as RGB; more than MAX_PIXELS is a ValueError before decoding."""
    with Image.open(path) as opened:
        width, height = opened.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{path} is {width}x{height}, more than the {MAX_PIXELS:,} pixels mmar decodes: "
                             "shrink it first")
        return opened.convert("RGB")


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [-1, 1] -> RGB PIL image."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()  # (3, H, W) uint8
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def from_pil(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL -> (3, H, W) float in [-1, 1], optionally resized to size x size."""
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)  # (H*W*3,)
    array = array.view(image.size[1], image.size[0], 3).permute(2, 0, 1)  # (3, H, W)
    return array.float() / 127.5 - 1


def captioned_grid(images: list[Image.Image], captions: list[str], columns: int = 8, cell: int = 96) -> Image.Image:
    """Lay images out in a grid, each upscaled to `cell` px with its caption below (wrapped)."""
    if not images:
        raise ValueError("no images to put in a grid")
    font = ImageFont.load_default()
    text_height = 36
    rows = (len(images) + columns - 1) // columns
    columns = min(columns, len(images))
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        grid.paste(image.resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width=max(8, cell // 6))[:3]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell + 1 + 11 * j), line, fill="black", font=font)
    return grid


def save_atomic(image: Image.Image, path: str | Path) -> None:
    """Write a PNG via a temporary file so a kill never leaves a half-written image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        image.save(temporary, format="PNG")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
