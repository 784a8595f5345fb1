"""Analytic checker for the procedural moving shapes: does a (generated) clip show its caption?

Each frame is measured by `mmar.evaluation.shapes_checker` (the largest bright blob, its colour,
fill and bounding box). Over the clip: the colour and the shape are the majority vote of the frames
that show a shape; the direction comes from the track of the shape's centre (the bounding box's
centre, frame by frame): the least-squares slope of x and of y over the frame index, the larger one
picks the axis and its sign the side (y grows downwards, so a negative y slope is "up"). A track
that moves less than a quarter of the dataset's travel has no direction (a frozen clip is wrong).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import numpy as np
import torch

from mmar.data.moving_shapes import (COLORS, DIRECTIONS, SHAPES, TRAVEL, MovingShapesDataset, all_captions, caption,
                                     parse_caption)
from mmar.evaluation.prompt_following import held_out_items
from mmar.evaluation.shapes_checker import classify, features, to_rgb_array

ATTRIBUTES = ("color", "shape", "direction", "all")
#: the least travel (fraction of the frame side, first to last frame) that still has a direction
MIN_TRAVEL = 0.25 * TRAVEL / 32


class ClipDescription(NamedTuple):
    """What `describe_clip` reads off a clip; None where it cannot tell."""

    color: str | None
    shape: str | None
    direction: str | None


def _frames(clip: Any) -> list[np.ndarray]:
    """A clip tensor (F, 3, H, W) in [-1, 1] or a list of frames -> list of (H, W, 3) arrays in [0, 1]."""
    if isinstance(clip, torch.Tensor):
        if clip.dim() != 4 or clip.shape[1] != 3:
            raise ValueError(f"expected a clip tensor (F, 3, H, W), got shape {tuple(clip.shape)}")
        return [to_rgb_array(frame) for frame in clip.unbind(0)]
    return [to_rgb_array(frame) for frame in clip]


def _majority(values: list[str]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def direction_of(centers: np.ndarray) -> str | None:
    """Track (n, 2) of (x, y) centres (fractions of the side) over frames 0..n-1 -> a direction, or None."""
    if len(centers) < 2:
        return None
    steps = np.arange(len(centers), dtype=np.float64) - (len(centers) - 1) / 2  # (n,) centred frame index
    slopes = (steps[:, None] * (centers - centers.mean(0))).sum(0) / (steps**2).sum()  # (2,) per frame
    travel = np.abs(slopes) * (len(centers) - 1)  # (2,) first to last frame along x, y
    if travel.max() < MIN_TRAVEL:
        return None
    axis = int(travel.argmax())
    if axis == 0:
        return "right" if slopes[0] > 0 else "left"
    return "down" if slopes[1] > 0 else "up"


def describe_clip(clip: Any) -> ClipDescription:
    """Read (color, shape, direction) off a clip (F, 3, H, W) in [-1, 1] (or a list of frames)."""
    colors, shapes, centers, frames_seen = [], [], [], []
    for index, frame in enumerate(_frames(clip)):
        measured = features(frame)
        if measured is None:
            continue
        seen = classify(measured)
        colors.append(seen.color)
        shapes.append(seen.shape)
        centers.append(measured.center)
        frames_seen.append(index)
    if not centers:
        return ClipDescription(None, None, None)
    # The slope runs over the frame index of the frames that show a shape (a gap does not bend time).
    track = np.array(centers, dtype=np.float64)  # (n, 2)
    index = np.array(frames_seen, dtype=np.float64)  # (n,)
    if len(index) >= 2 and np.ptp(index) > 0:
        # Resample onto consecutive steps so direction_of's unit spacing holds.
        steps = np.arange(int(index[0]), int(index[-1]) + 1)
        track = np.stack([np.interp(steps, index, track[:, axis]) for axis in range(2)], axis=1)  # (n', 2)
    return ClipDescription(_majority(colors), _majority(shapes), direction_of(track))


class ClipCheck(NamedTuple):
    color: bool
    shape: bool
    direction: bool

    @property
    def all(self) -> bool:
        return self.color and self.shape and self.direction


def check_clip(clip: Any, caption: str) -> ClipCheck:
    """Does `clip` show `caption` ("a {color} {shape} moving {direction}")? An empty clip: all False."""
    color, shape, direction = parse_caption(caption)
    seen = describe_clip(clip)
    return ClipCheck(seen.color == color, seen.shape == shape, seen.direction == direction)


def evaluation_prompts(num_prompts: int = 64, seed: int = 0) -> list[str]:
    """`num_prompts` distinct captions (1..96), balanced: prompt i takes colour i mod 8, shape i mod 3 and
    direction (i + i // 24) mod 4 (i mod 24 fixes colour and shape; the i // 24 term walks the four
    directions through each block of 24, so 96 consecutive indices are all 96 captions)."""
    total = len(all_captions())
    if not 1 <= num_prompts <= total:
        raise ValueError(f"num_prompts must be in 1..{total} (the number of distinct captions), got {num_prompts}")
    colors, directions = list(COLORS), list(DIRECTIONS)
    indices = [(seed + i) % total for i in range(num_prompts)]
    return [caption(colors[i % 8], SHAPES[i % 3], directions[(i + i // 24) % 4]) for i in indices]


class MovingShapesChecker:
    """Moving shapes: colour, shape and direction read off the frames or out of a caption."""

    attributes = ATTRIBUTES

    def prompts(self, num_prompts: int, seed: int) -> list[str]:
        return evaluation_prompts(num_prompts, seed)

    def score(self, outputs: list[Any], prompts: list[str]) -> dict:
        """Clips (F, 3, H, W) in [-1, 1] against their prompts -> fraction per attribute and "all", "count"."""
        if len(outputs) != len(prompts) or not outputs:
            raise ValueError(f"{len(outputs)} clips for {len(prompts)} prompts")
        checks = [check_clip(clip, text) for clip, text in zip(outputs, prompts)]
        count = len(checks)
        return {**{name: sum(getattr(c, name) for c in checks) / count for name in ATTRIBUTES}, "count": count}

    def caption_items(self, num_items: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """Held-out clips (a seed no training recipe uses) -> (clips (N, 9, 3, 32, 32), their captions)."""
        dataset = MovingShapesDataset(num_items=num_items, size=32, num_frames=9, seed=10_000 + seed)
        return held_out_items(dataset, num_items)

    def score_captions(self, captions: list[str], truths: list[str]) -> dict:
        """Each caption parsed back into (colour, shape, direction) vs the clip's own; unparsable = all wrong."""
        if len(captions) != len(truths) or not captions:
            raise ValueError(f"{len(captions)} captions for {len(truths)} items")
        hits, parsed = Counter(), 0
        for text, truth in zip(captions, truths):
            try:
                got = parse_caption(text)
            except ValueError:
                continue
            parsed += 1
            matches = [a == b for a, b in zip(got, parse_caption(truth))]
            hits.update(name for name, match in zip(ATTRIBUTES, matches) if match)
            hits["all"] += all(matches)
        count = len(captions)
        return {**{name: hits[name] / count for name in ATTRIBUTES}, "parsed": parsed / count, "count": count}
