"""Procedural captioned shapes: one coloured circle, square or triangle on black, exact captions.

Caption grammar: "a {color} {shape} at the {position}". Deterministic: item i of a dataset with
seed s is always the same image. Shapes are about 10-16 px across on 32x32 images (scaled with
the image size), so each covers several 4x4 or 8x8 token cells and keeps its caption through a
tokenizer.
"""

from __future__ import annotations

import itertools

import torch

from mmar.data.media_source import ImageSource

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
}
SHAPES = ("circle", "square", "triangle")
#: centre of each position as a fraction of the image side (x, y)
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}


def caption(color: str, shape: str, position: str) -> str:
    return f"a {color} {shape} at the {position}"


def all_captions() -> list[str]:
    """Every caption the grammar allows (8 x 3 x 5 = 120), in a fixed order."""
    return [caption(c, s, p) for c, s, p in itertools.product(COLORS, SHAPES, POSITIONS)]


def parse_caption(text: str) -> tuple[str, str, str]:
    """Inverse of `caption`; a ValueError for text outside the grammar."""
    words = text.strip().split(" at the ")
    if len(words) == 2:
        head, position = words
        parts = head.split()
        if len(parts) == 3 and parts[0] == "a" and parts[1] in COLORS and parts[2] in SHAPES and position in POSITIONS:
            return parts[1], parts[2], position
    raise ValueError(f"not a shapes caption: {text!r} (expected 'a {{color}} {{shape}} at the {{position}}')")


def render(color: str, shape: str, position: str, size: int = 32, *, extent: float = 13.0,
           offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Draw one shape -> image (3, size, size) float in [-1, 1] (black background = -1).

    `extent` is the shape's width in pixels at size 32 (scaled with `size`); `offset` shifts the
    centre by that many pixels (also at size 32).
    """
    scale = size / 32.0
    cx = POSITIONS[position][0] * size + offset[0] * scale
    cy = POSITIONS[position][1] * size + offset[1] * scale
    half = extent * scale / 2
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (H, W) each
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        # About the circle's area (sqrt(pi)/2 = 0.886), and >= 10 px across at the smallest extent.
        side = half * 0.91
        inside = ((x - cx).abs() <= side) & ((y - cy).abs() <= side)
    elif shape == "triangle":
        # Upright isosceles triangle: apex at the top, base at the bottom.
        top, bottom = cy - half, cy + half
        width_at_y = (y - top) / (bottom - top) * half  # half-width grows from apex to base
        inside = (y >= top) & (y <= bottom) & ((x - cx).abs() <= width_at_y)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    rgb = torch.tensor(COLORS[color]).view(3, 1, 1)  # (3, 1, 1)
    image = inside.float().unsqueeze(0) * rgb  # (3, H, W) in [0, 1]
    return image * 2 - 1


class ShapesDataset(ImageSource):
    """`num_items` captioned shapes; item i is drawn from a generator seeded by (seed, i)."""


    @classmethod
    def build(cls, *, size: int, num_items: int | None, seed: int, path: str | None, **_: object) -> "ShapesDataset":
        if num_items is None:
            raise ValueError("the shapes source needs num_items (it is procedural and unbounded)")
        return cls(num_items=num_items, size=size, seed=seed)

    def __init__(self, num_items: int = 10_000, size: int = 32, seed: int = 0) -> None:
        if size < 16:
            raise ValueError(f"shapes need images of at least 16 px, got {size}")
        self.num_items, self.size, self.seed = num_items, size, seed

    def __len__(self) -> int:
        return self.num_items

    def attributes(self, index: int) -> tuple[str, str, str, float, tuple[float, float]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pick = lambda n: int(torch.randint(n, (), generator=generator))  # noqa: E731
        color = list(COLORS)[pick(len(COLORS))]
        shape = SHAPES[pick(len(SHAPES))]
        position = list(POSITIONS)[pick(len(POSITIONS))]
        extent = 11.0 + 4.0 * float(torch.rand((), generator=generator))  # 11..15 px at size 32
        offset = tuple(float(v) for v in (torch.rand(2, generator=generator) * 3 - 1.5))  # +-1.5 px
        return color, shape, position, extent, offset

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        color, shape, position, extent, offset = self.attributes(index)
        return render(color, shape, position, self.size, extent=extent, offset=offset), caption(color, shape, position)
