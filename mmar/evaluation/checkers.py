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

from mmar.data import notes
from mmar.data.shapes import ShapesDataset, parse_caption
from mmar.evaluation import notes_checker
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


class NotesChecker:
    """Notes: the first note's pitch and the rhythm (once, four times, rising) read off the waveform
    (`notes_checker`) or out of a caption. Clips are (1, S) at `sample_rate`; timbre is not checked."""

    attributes = ("pitch", "rhythm", "all")

    def __init__(self, sample_rate: int = 16000, seconds: float = 1.0) -> None:
        self.sample_rate, self.seconds = sample_rate, seconds

    def prompts(self, num_prompts: int, seed: int) -> list[str]:
        """`num_prompts` captions drawn from the whole grammar with `seed` (without repeats while they last)."""
        captions = notes.all_captions()
        order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed)).tolist()
        return [captions[order[i % len(order)]] for i in range(num_prompts)]

    def score(self, outputs: list[Any], prompts: list[str]) -> dict:
        if len(outputs) != len(prompts) or not outputs:
            raise ValueError(f"{len(outputs)} outputs for {len(prompts)} prompts")
        hits = {name: 0 for name in self.attributes}
        for audio, prompt in zip(outputs, prompts):
            _, note, rhythm = notes.parse_caption(prompt)
            for name, match in notes_checker.check(audio, note, rhythm, self.sample_rate).items():
                hits[name] += match
        return {**{name: hits[name] / len(prompts) for name in self.attributes}, "count": len(prompts)}

    def caption_items(self, num_items: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """Held-out clips (a seed no training recipe uses) -> (audio (N, 1, S), their captions)."""
        dataset = notes.NotesDataset(num_items, seconds=self.seconds, sample_rate=self.sample_rate, seed=10_000 + seed)
        items = [dataset[i] for i in range(num_items)]
        return torch.stack([audio for audio, _ in items]), [text for _, text in items]

    def score_captions(self, captions: list[str], truths: list[str]) -> dict:
        """Each caption parsed back into (timbre, note, rhythm) vs the clip's own; unparsable = all wrong."""
        if len(captions) != len(truths) or not captions:
            raise ValueError(f"{len(captions)} captions for {len(truths)} items")
        names = ("timbre", "pitch", "rhythm")
        hits = {name: 0 for name in (*names, "all")}
        parsed = 0
        for text, truth in zip(captions, truths):
            try:
                got = notes.parse_caption(text)
            except ValueError:
                continue
            parsed += 1
            matches = [a == b for a, b in zip(got, notes.parse_caption(truth))]
            for name, match in zip(names, matches):
                hits[name] += match
            hits["all"] += all(matches)
        count = len(captions)
        return {**{name: value / count for name, value in hits.items()}, "parsed": parsed / count, "count": count}


CHECKERS: dict[str, Checker] = {"shapes": ShapesChecker(), "moving_shapes": MovingShapesChecker(), "notes": NotesChecker()}


def checker_for(source: str) -> Checker:
    if source not in CHECKERS:
        raise ValueError(f"no analytic checker for data source {source!r}: only {', '.join(CHECKERS)} "
                         "has exact captions to check against")
    return CHECKERS[source]
