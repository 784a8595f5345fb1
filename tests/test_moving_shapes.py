"""Procedural moving shapes and their analytic checker."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmar.data import DATA_SOURCES, make_source, source_data_shape
from mmar.data.moving_shapes import DIRECTIONS, MovingShapesDataset, all_captions, parse_caption, render_clip
from mmar.evaluation import CHECKERS
from mmar.evaluation.moving_shapes_checker import check_clip, describe_clip, evaluation_prompts
from trainers.common import DataConfig


def test_source_is_registered_deterministic_and_in_frame():
    assert DATA_SOURCES["moving_shapes"].modality == "video"
    config = DataConfig(source="moving_shapes", num_items=40, num_frames=9, seed=5)
    source = make_source(**dataclasses.asdict(config))
    assert source_data_shape(**dataclasses.asdict(config)) == (9, 3, 32, 32)
    again = make_source(**dataclasses.asdict(config))
    for i in range(len(source)):
        clip, text = source[i]
        assert clip.shape == (9, 3, 32, 32) and clip.min() >= -1 and clip.max() <= 1
        assert torch.equal(clip, again[i][0]) and text == again[i][1]
        parse_caption(text)
        lit = (clip > -1).any(dim=1)  # (F, H, W) shape pixels
        assert lit.flatten(1).any(1).all(), "a frame without the shape"
        # In frame: no shape pixel on the border rows / columns.
        assert not (lit[:, 0].any() or lit[:, -1].any() or lit[:, :, 0].any() or lit[:, :, -1].any())
    assert len({source[i][1] for i in range(len(source))}) > 20
    assert len(all_captions()) == 96


def test_caption_grammar():
    assert parse_caption("a red circle moving left") == ("red", "circle", "left")
    for bad in ("a red circle at the top left", "a red circle moving sideways", "a purple square moving up"):
        with pytest.raises(ValueError, match="moving-shapes caption"):
            parse_caption(bad)


def test_checker_agrees_with_the_captions():
    # 2,000 clips agree at 100.0% (see the README for the command); a slice keeps the suite short.
    dataset = MovingShapesDataset(150, size=32, num_frames=9, seed=11)
    checks = [check_clip(*dataset[i]) for i in range(len(dataset))]
    assert sum(c.all for c in checks) / len(checks) >= 0.99


def test_checker_reads_each_direction_and_rejects_frozen_or_blank_clips():
    for direction in DIRECTIONS:
        seen = describe_clip(render_clip("cyan", "triangle", direction))
        assert seen == ("cyan", "triangle", direction)
    frozen = render_clip("red", "square", "left")[:1].repeat(9, 1, 1, 1)  # (9, 3, 32, 32) no motion
    assert describe_clip(frozen).direction is None and not check_clip(frozen, "a red square moving left").all
    reversed_clip = render_clip("red", "square", "left").flip(0)
    assert describe_clip(reversed_clip).direction == "right"
    assert describe_clip(torch.full((9, 3, 32, 32), -1.0)) == (None, None, None)


def test_checker_protocol_prompts_and_scores():
    checker = CHECKERS["moving_shapes"]
    prompts = checker.prompts(64, seed=0)
    assert len(set(prompts)) == 64 and set(evaluation_prompts(96)) == set(all_captions())
    colors = {parse_caption(p)[0] for p in prompts}
    directions = [parse_caption(p)[2] for p in prompts]
    assert len(colors) == 8 and all(12 <= directions.count(d) <= 20 for d in DIRECTIONS)
    clips = [render_clip(*parse_caption(p)) for p in prompts[:8]]
    assert checker.score(clips, prompts[:8]) == {"color": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0, "count": 8}
    assert checker.score(clips, prompts[1:9])["all"] < 1.0
    items, truths = checker.caption_items(4, seed=0)
    assert items.shape == (4, 9, 3, 32, 32) and len(truths) == 4
    report = checker.score_captions(truths[:2] + ["nonsense", truths[0]], truths)
    assert report["parsed"] == 0.75 and report["all"] == 0.5
