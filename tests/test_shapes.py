"""Procedural shapes: determinism, exact caption grammar, sizes."""

import re

import pytest
import torch

from mmar.data.shapes import COLORS, POSITIONS, SHAPES, ShapesDataset, all_captions, caption, parse_caption, render

GRAMMAR = re.compile(
    rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(POSITIONS)})$")


def bounding_box_sides(image: torch.Tensor) -> tuple[int, int]:
    """(width, height) in pixels of everything that is not black in an image (3, H, W)."""
    foreground = (image > -1).any(0)  # (H, W)
    rows = foreground.any(1).nonzero()[:, 0]
    cols = foreground.any(0).nonzero()[:, 0]
    return int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def test_deterministic_by_seed():
    first, again, other = ShapesDataset(50, seed=3), ShapesDataset(50, seed=3), ShapesDataset(50, seed=4)
    for index in (0, 7, 49):
        assert torch.equal(first[index][0], again[index][0]) and first[index][1] == again[index][1]
    assert any(not torch.equal(first[i][0], other[i][0]) for i in range(50))
    with pytest.raises(IndexError):
        first[50]


def test_caption_grammar_is_exact():
    dataset = ShapesDataset(300, seed=0)
    seen = set()
    for index in range(len(dataset)):
        image, text = dataset[index]
        assert GRAMMAR.match(text), text
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32  # (3, H, W)
        assert image.min() >= -1 and image.max() <= 1
        seen.add(text)
    assert len(seen) > 90  # 300 draws from 120 captions cover most of them
    assert caption("red", "circle", "top left") == "a red circle at the top left"


def test_parse_round_trip():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == len(COLORS) * len(SHAPES) * len(POSITIONS) == 120
    for text in captions:
        assert caption(*parse_caption(text)) == text
    for bad in ("a red circle", "a purple circle at the center", "a red hexagon at the center",
                "the red circle at the center", "a red circle at the middle", ""):
        with pytest.raises(ValueError):
            parse_caption(bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_shapes_are_10_to_16_px_across_at_32(seed):
    dataset = ShapesDataset(1500, size=32, seed=seed)
    for index in range(len(dataset)):
        width, height = bounding_box_sides(dataset[index][0])
        assert 10 <= width <= 16 and 10 <= height <= 16, (index, dataset[index][1], width, height)


@pytest.mark.parametrize("size", [16, 24, 48, 64, 96])
def test_other_sizes(size):
    dataset = ShapesDataset(20, size=size, seed=0)
    for index in range(len(dataset)):
        image, text = dataset[index]
        assert image.shape == (3, size, size)  # (3, H, W)
        assert image.min() == -1 and image.max() == 1 and GRAMMAR.match(text)
    # the drawing scales with the image: the same circle is twice as wide at twice the size
    small = bounding_box_sides(render("red", "circle", "center", 32, extent=12.0))
    large = bounding_box_sides(render("red", "circle", "center", 64, extent=12.0))
    assert abs(large[0] - 2 * small[0]) <= 1
    with pytest.raises(ValueError):
        ShapesDataset(10, size=8)
