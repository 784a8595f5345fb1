"""Procedural captioned clips: one coloured shape moving in a straight line on black, exact captions.

Caption grammar: "a {color} {shape} moving {direction}", with the colours and shapes of
`mmar.data.shapes` (drawn by its `render`) and direction in {left, right, up, down} (up = towards
the top of the frame). Clips are (F, 3, H, W) float in [-1, 1], frames first (`mmar.media`'s
layout). Deterministic: item i of a dataset with seed s is always the same clip.

At 32x32 the shape is 10-13 px across and its centre travels 12 px (scaled with the size) at a
constant speed along the caption's direction, centred on the frame's middle give or take 2 px,
and offset up to 4 px across it; it therefore always stays whole in frame, and moves more than
its own half-width between the first and the last frame, which makes the direction unambiguous.
"""

from __future__ import annotations

import itertools

import torch

from mmar.data.media_source import VideoSource
from mmar.data.shapes import COLORS, SHAPES, render

DIRECTIONS: dict[str, tuple[float, float]] = {  # unit motion (x, y) in image coordinates (y grows downwards)
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
TRAVEL = 12.0  # px at size 32: how far the centre moves from the first frame to the last
ALONG_JITTER = 2.0  # px: the track's midpoint is the frame centre give or take this, along the motion
ACROSS_JITTER = 4.0  # px: and offset up to this across it


def caption(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


def all_captions() -> list[str]:
    """Every caption the grammar allows (8 x 3 x 4 = 96), in a fixed order."""
    return [caption(c, s, d) for c, s, d in itertools.product(COLORS, SHAPES, DIRECTIONS)]


def parse_caption(text: str) -> tuple[str, str, str]:
    """Inverse of `caption`; a ValueError for text outside the grammar."""
    parts = text.strip().split()
    if (len(parts) == 5 and parts[0] == "a" and parts[1] in COLORS and parts[2] in SHAPES and parts[3] == "moving"
            and parts[4] in DIRECTIONS):
        return parts[1], parts[2], parts[4]
    raise ValueError(f"not a moving-shapes caption: {text!r} (expected 'a {{color}} {{shape}} moving {{direction}}')")


def render_clip(color: str, shape: str, direction: str, *, size: int = 32, num_frames: int = 9, extent: float = 12.0,
                along: float = 0.0, across: float = 0.0) -> torch.Tensor:
    """Draw one clip -> (num_frames, 3, size, size) float in [-1, 1].

    The centre moves TRAVEL px (at size 32) along `direction`, from `along - TRAVEL / 2` to
    `along + TRAVEL / 2` relative to the frame centre, `across` px to the side of it.
    """
    if num_frames < 2:
        raise ValueError(f"a moving shape needs at least 2 frames, got {num_frames}")
    dx, dy = DIRECTIONS[direction]
    frames = []
    for k in range(num_frames):
        distance = along + TRAVEL * (k / (num_frames - 1) - 0.5)  # px along the motion
        offset = (dx * distance - dy * across, dy * distance + dx * across)  # (x, y) px from the centre
        frames.append(render(color, shape, "center", size, extent=extent, offset=offset))  # (3, size, size)
    return torch.stack(frames)  # (F, 3, size, size)


class MovingShapesDataset(VideoSource):
    """`num_items` captioned clips; item i is drawn from a generator seeded by (seed, i)."""


    @classmethod
    def build(cls, *, size: int, num_frames: int, num_items: int | None, seed: int, path: str | None,
              **_: object) -> "MovingShapesDataset":
        if num_items is None:
            raise ValueError("the moving_shapes source needs num_items (it is procedural and unbounded)")
        return cls(num_items=num_items, size=size, num_frames=num_frames, seed=seed)

    def __init__(self, num_items: int = 10_000, size: int = 32, num_frames: int = 9, seed: int = 0) -> None:
        if size < 16:
            raise ValueError(f"moving shapes need frames of at least 16 px, got {size}")
        if num_frames < 2:
            raise ValueError(f"moving shapes need at least 2 frames per clip, got {num_frames}")
        self.num_items, self.size, self.num_frames, self.seed = num_items, size, num_frames, seed

    def __len__(self) -> int:
        return self.num_items

    def attributes(self, index: int) -> tuple[str, str, str, float, float, float]:
        """(color, shape, direction, extent px, along px, across px) of item `index`."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 7)
        pick = lambda n: int(torch.randint(n, (), generator=generator))  # noqa: E731
        color = list(COLORS)[pick(len(COLORS))]
        shape = SHAPES[pick(len(SHAPES))]
        direction = list(DIRECTIONS)[pick(len(DIRECTIONS))]
        extent, along, across = (float(v) for v in torch.rand(3, generator=generator))
        return (color, shape, direction, 10.0 + 3.0 * extent, (2 * along - 1) * ALONG_JITTER,
                (2 * across - 1) * ACROSS_JITTER)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        color, shape, direction, extent, along, across = self.attributes(index)
        clip = render_clip(color, shape, direction, size=self.size, num_frames=self.num_frames, extent=extent,
                           along=along, across=across)  # (F, 3, size, size)
        return clip, caption(color, shape, direction)
