"""Analytic checker for the procedural shapes: does a (generated) image show its caption?

No pretrained network can be downloaded here, so prompt following on `mmar.data.shapes` is read
off the pixels: the foreground is the largest 4-connected blob noticeably brighter than the
background; its colour is the nearest of `COLORS` to the median of its core pixels (normalised by
brightness, so a dim red is still red); its position is the nearest of `POSITIONS` to the centre of
its bounding box; its shape comes from how much of the bounding box it fills (square ~1.0, circle
~pi/4, triangle ~0.5) and whether it is wider at the bottom than at the top (the upright triangle).
Soft edges and faint noise are handled by thresholding at half the blob's own peak brightness.
The same idea as GenEval's object/colour/position checks, with geometry in place of a detector.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from mmar.data.shapes import COLORS, POSITIONS, parse_caption

#: brightness (max over channels, in [0, 1]) above the background that counts as "not black"
MIN_CONTRAST = 0.2
#: a blob smaller than this fraction of the image is treated as no shape at all
MIN_AREA_FRACTION = 0.01
#: images are analysed at most at this side (area-downsampled): the geometry is scale-free
MAX_SIDE = 64
#: (bottom-half area - top-half area) / area above this = wider at the bottom = triangle (0.5 ideal)
TRIANGLE_ASYMMETRY = 0.22
#: fill of the bounding box below this = triangle even if symmetric (a triangle fills ~0.5)
TRIANGLE_FILL = 0.62
#: fill of the bounding box above this = square: a square fills 1.0, a circle pi/4 = 0.785,
#: but up to 0.90 when pixelated at 11-12 px
SQUARE_FILL = 0.93


class ShapeCheck(NamedTuple):
    """Which caption attributes a generated image matches."""

    color: bool
    shape: bool
    position: bool

    @property
    def all(self) -> bool:
        return self.color and self.shape and self.position


class Description(NamedTuple):
    """What `describe` reads off an image; all None when there is no foreground."""

    color: str | None
    shape: str | None
    position: str | None


class Features(NamedTuple):
    """Raw measurements behind `Description` (exposed for tests and threshold tuning)."""

    rgb: tuple[float, float, float]  # median core colour, normalised so its max channel is 1
    fill: float  # blob area / bounding-box area
    asymmetry: float  # (bottom-half area - top-half area) / area
    center: tuple[float, float]  # bounding-box centre (x, y) as a fraction of the side
    area_fraction: float  # blob area / image area


def to_rgb_array(image: torch.Tensor | Image.Image | np.ndarray) -> np.ndarray:
    """A tensor (3, H, W) in [-1, 1], a PIL image or a uint8 (H, W, 3) array -> (H, W, 3) float in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
        array = image.astype(np.float32)  # (H, W, 3)
        return array / 255.0 if image.dtype == np.uint8 else (array + 1) / 2
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
        array = image.detach().float().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
        return np.clip((array + 1) / 2, 0.0, 1.0)
    raise TypeError(f"expected a tensor, PIL image or numpy array, got {type(image).__name__}")


def _downsample(rgb: np.ndarray) -> np.ndarray:
    """Area-average (H, W, 3) so that its longer side is at most MAX_SIDE."""
    height, width = rgb.shape[:2]
    if max(height, width) <= MAX_SIDE:
        return rgb
    scale = MAX_SIDE / max(height, width)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    tensor = torch.nn.functional.interpolate(tensor, size=size, mode="area")  # (1, 3, H', W')
    return tensor[0].permute(1, 2, 0).numpy()  # (H', W', 3)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean (H, W) mask (all False if the mask is empty).

    Labels propagate as the running maximum over 4-neighbours until nothing changes: a handful of
    vectorised steps for blob-sized components, no scipy needed.
    """
    if not mask.any():
        return mask
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), dtype=np.int64)  # (H+2, W+2) zero border
    labels = padded[1:-1, 1:-1]  # (H, W) view into the padded buffer
    labels[...] = np.where(mask, np.arange(1, height * width + 1).reshape(height, width), 0)  # (H, W)
    while True:
        neighbours = np.maximum.reduce([
            labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:],
        ])  # (H, W)
        updated = np.where(mask, neighbours, 0)  # (H, W)
        if np.array_equal(updated, labels):
            break
        labels[...] = updated
    counts = np.bincount(labels.ravel())  # (H*W+1,)
    counts[0] = 0
    return labels == counts.argmax()


def prune_spurs(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    """Drop pixels of a boolean (H, W) mask with at most one 4-neighbour, `steps` times.

    Speckle noise that touches the blob sticks out as one- or two-pixel spurs that would widen its
    bounding box; a real edge pixel has two or more neighbours. (The triangle's apex pixel goes too,
    which moves its box by one row and keeps it a triangle.)
    """
    for _ in range(steps):
        padded = np.pad(mask, 1)  # (H+2, W+2)
        count = (padded[:-2, 1:-1].astype(np.int8) + padded[2:, 1:-1] + padded[1:-1, :-2]
                 + padded[1:-1, 2:])  # (H, W) 4-neighbours inside the mask
        mask = mask & (count >= 2)  # (H, W)
    return mask


def features(image: torch.Tensor | Image.Image | np.ndarray) -> Features | None:
    """Measure the main foreground blob; None when nothing is noticeably brighter than the background."""
    rgb = _downsample(to_rgb_array(image))  # (H, W, 3)
    height, width = rgb.shape[:2]
    background = np.median(rgb.reshape(-1, 3), axis=0)  # (3,) shapes cover well under half the image
    signal = np.clip(rgb - background, 0.0, None)  # (H, W, 3)
    brightness = signal.max(axis=2)  # (H, W)

    coarse = largest_component(brightness > MIN_CONTRAST)  # (H, W)
    if coarse.sum() < MIN_AREA_FRACTION * height * width:
        return None
    peak = float(np.percentile(brightness[coarse], 90))
    # Half the blob's own peak: where a blurred edge crosses, so soft edges keep the true outline.
    blob = largest_component(prune_spurs(largest_component(brightness >= 0.5 * peak)))  # (H, W)
    area = int(blob.sum())
    if area < MIN_AREA_FRACTION * height * width:
        return None

    core = blob & (brightness >= 0.8 * peak)  # (H, W) interior pixels, away from blurred edges
    if not core.any():
        core = blob
    color = np.median(signal[core], axis=0)  # (3,)
    color = color / max(float(color.max()), 1e-6)  # (3,) brightness-free: a dim red is red

    rows = np.flatnonzero(blob.any(axis=1))
    cols = np.flatnonzero(blob.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    box_area = (bottom - top + 1) * (right - left + 1)
    middle = (top + bottom + 1) / 2  # row coordinate of the box's horizontal midline
    row_centers = np.arange(height)[:, None] + 0.5  # (H, 1)
    upper = float((blob & (row_centers < middle)).sum())
    lower = float((blob & (row_centers > middle)).sum())
    return Features(
        rgb=tuple(float(v) for v in color),
        fill=area / box_area,
        asymmetry=(lower - upper) / area,
        center=((left + right + 1) / 2 / width, (top + bottom + 1) / 2 / height),
        area_fraction=area / (height * width),
    )


def describe(image: torch.Tensor | Image.Image | np.ndarray) -> Description:
    """Read (color, shape, position) off an image (3, H, W) in [-1, 1] or a PIL image; Nones if empty."""
    measured = features(image)
    return Description(None, None, None) if measured is None else classify(measured)


def classify(measured: Features) -> Description:
    """The nearest colour, the shape and the nearest position of measured `Features`."""
    names = list(COLORS)
    palette = np.array([COLORS[name] for name in names], dtype=np.float32)  # (8, 3)
    color = names[int(np.linalg.norm(palette - np.array(measured.rgb), axis=1).argmin())]

    if measured.asymmetry > TRIANGLE_ASYMMETRY or measured.fill < TRIANGLE_FILL:
        shape = "triangle"
    elif measured.fill > SQUARE_FILL:
        shape = "square"
    else:
        shape = "circle"

    places = list(POSITIONS)
    anchors = np.array([POSITIONS[name] for name in places], dtype=np.float32)  # (5, 2)
    position = places[int(np.linalg.norm(anchors - np.array(measured.center), axis=1).argmin())]
    return Description(color, shape, position)


def check(image: torch.Tensor | Image.Image | np.ndarray, caption: str) -> ShapeCheck:
    """Does `image` show `caption` ("a {color} {shape} at the {position}")? Empty image -> all False."""
    color, shape, position = parse_caption(caption)
    seen = describe(image)
    return ShapeCheck(color=seen.color == color, shape=seen.shape == shape, position=seen.position == position)
