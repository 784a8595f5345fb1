"""The analytic checkers, one per procedural data source: prompt-following and caption accuracy.

`CHECKERS` maps a data source name to its checker; a pipeline records which source each modality
was trained on, so `mmar eval` finds the checker itself. A checker gives evaluation prompts,
scores generated items against them, and scores captions: it gives the ground-truth items of a
held-out split, and judges a caption by parsing it back into attributes and comparing them with
the item's own. Real sources (Fashion-MNIST, a user folder) have no exact captions to check.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from mmar.data.shapes import ShapesDataset, parse_caption
from mmar.evaluation.moving_shapes_checker import MovingShapesChecker
from mmar.evaluation.prompt_following import evaluation_prompts, score


class Checker(Protocol):
    attributes: tuple[str, ...]  # what score() and score_captions() report, "all" last

    def prompts(self, num_prompts: int, seed: int) -> list[str]: ...
    def score(self, outputs: list[Any], prompts: list[str]) -> dict: ...
    def caption_items(self, num_items: int, seed: int) -> tuple[torch.Tensor, list[str]]: ...
    def score_captions(self, captions: list[str], truths: list[str]) -> dict: ...


class ShapesChecker:
    """Shapes: colour, shape and position read off the pixels (`shapes_checker`) or out of a caption."""

    attributes = ("color", "shape", "position", "all")

    def prompts(self, num_prompts: int, seed: int) -> list[str]:
        return evaluation_prompts(num_prompts, seed=seed)

    def score(self, outputs: list[Any], prompts: list[str]) -> dict:
        return score(outputs, prompts)

    def caption_items(self, num_items: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """Held-out shapes (a seed no training recipe uses) -> (images (N, 3, 32, 32), their captions)."""
        dataset = ShapesDataset(num_items=num_items, size=32, seed=10_000 + seed)
        items = [dataset[i] for i in range(num_items)]
        return torch.stack([image for image, _ in items]), [text for _, text in items]

    def score_captions(self, captions: list[str], truths: list[str]) -> dict:
        """Each caption parsed back into (colour, shape, position) vs the image's own; unparsable = all wrong."""
        if len(captions) != len(truths) or not captions:
            raise ValueError(f"{len(captions)} captions for {len(truths)} items")
        hits = {name: 0 for name in self.attributes}
        parsed = 0
        for text, truth in zip(captions, truths):
            expected = parse_caption(truth)
            try:
                got = parse_caption(text)
            except ValueError:
                continue
            parsed += 1
            matches = [a == b for a, b in zip(got, expected)]
            for name, match in zip(self.attributes, matches):
                hits[name] += match
            hits["all"] += all(matches)
        count = len(captions)
        return {**{name: hits[name] / count for name in self.attributes}, "parsed": parsed / count, "count": count}


CHECKERS: dict[str, Checker] = {"shapes": ShapesChecker(), "moving_shapes": MovingShapesChecker()}


def checker_for(source: str) -> Checker:
    if source not in CHECKERS:
        raise ValueError(f"no analytic checker for data source {source!r}: only {', '.join(CHECKERS)} "
                         "has exact captions to check against")
    return CHECKERS[source]
