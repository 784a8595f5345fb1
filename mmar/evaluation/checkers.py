"""The analytic checkers, one per procedural data source: prompt-following and caption accuracy.

`CHECKERS` maps a data source name to its checker; a pipeline records which source each modality
was trained on, so `mmar eval` finds the checker itself. A checker gives evaluation prompts,
scores generated items against them, and scores captions: it gives the ground-truth items of a
held-out split, and judges a caption by parsing it back into attributes and comparing them with
the item's own. Real sources (Fashion-MNIST, a user folder) have no exact captions to check.
Speech has no analytic reading: its words are read by a judge mmar trains itself (`speech_judge`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from mmar.data import notes, speech
from mmar.data.shapes import ShapesDataset, parse_caption
from mmar.evaluation import notes_checker
from mmar.evaluation.moving_shapes_checker import MovingShapesChecker
from mmar.evaluation.prompt_following import cycled, evaluation_prompts, held_out_items, score
from mmar.evaluation.speech_judge import JudgeTraining, SpeechJudge, load_or_train


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
        return held_out_items(dataset, num_items)

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
        return cycled(notes.all_captions(), num_prompts, seed)

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
        return held_out_items(dataset, num_items)

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


class SpeechChecker:
    """Speech: the word said, read off the waveform by the spoken-word judge (`speech_judge`), or a
    caption that is exactly the word. Clips are (1, S) at `sample_rate`.

    The judge is given (`judge`, with its training `report` when known) or, on first use, loaded
    from its cache or trained once there (`load_or_train(training, cache_dir)`).
    """

    attributes = ("word", "all")

    def __init__(self, judge: SpeechJudge | None = None, report: dict | None = None,
                 training: JudgeTraining = JudgeTraining(), cache_dir: str | Path | None = None,
                 sample_rate: int = 16000, seconds: float = 1.0) -> None:
        self._judge, self._report = judge, report
        self.training, self.cache_dir = training, cache_dir
        self.sample_rate, self.seconds = sample_rate, seconds

    @property
    def judge(self) -> SpeechJudge:
        if self._judge is None:
            self._judge, self._report = load_or_train(self.training, self.cache_dir)
        return self._judge

    def prompts(self, num_prompts: int, seed: int) -> list[str]:
        """`num_prompts` words: all of `speech.WORDS` in a seeded order, again and again."""
        return cycled(speech.WORDS, num_prompts, seed)

    def score(self, outputs: list[Any], prompts: list[str]) -> dict:
        """Generated clips (each (1, S)) vs their prompted words -> {"word", "all": the fraction the
        judge hears as the prompt, "judge_accuracy": its own held-out accuracy (None when unknown), "count"}."""
        if len(outputs) != len(prompts) or not outputs:
            raise ValueError(f"{len(outputs)} outputs for {len(prompts)} prompts")
        unknown = sorted(set(prompts) - set(self.judge.config.words))
        if unknown:
            raise ValueError(f"prompts {unknown[:3]} are not words the judge knows: {', '.join(self.judge.config.words)}")
        clips = [clip.detach().float().cpu() for clip in outputs]
        if self.sample_rate != self.judge.config.sample_rate:
            import torchaudio  # lazy: only a clip at another rate needs it

            clips = [torchaudio.functional.resample(clip, self.sample_rate, self.judge.config.sample_rate)
                     for clip in clips]
        said = self.judge.judge(clips)
        right = sum(word == prompt for word, prompt in zip(said, prompts)) / len(prompts)
        return {"word": right, "all": right, "judge_accuracy": (self._report or {}).get("held_out_accuracy"),
                "count": len(prompts)}

    def caption_items(self, num_items: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """Held-out clips (voices the speech recipe never trains on) -> (audio (N, 1, S), their words)."""
        dataset = speech.SpeechDataset(num_items, seconds=self.seconds, sample_rate=self.sample_rate,
                                       seed=10_000 + seed, voices=speech.HELD_OUT_VOICES)
        return held_out_items(dataset, num_items)

    def score_captions(self, captions: list[str], truths: list[str]) -> dict:
        """A caption is right when it is exactly the clip's word (surrounding whitespace aside); "parsed":
        the fraction that is one of the words at all."""
        if len(captions) != len(truths) or not captions:
            raise ValueError(f"{len(captions)} captions for {len(truths)} items")
        right = sum(text.strip() == truth for text, truth in zip(captions, truths)) / len(captions)
        parsed = sum(text.strip() in speech.WORDS for text in captions) / len(captions)
        return {"word": right, "all": right, "parsed": parsed, "count": len(captions)}


CHECKERS: dict[str, Checker] = {"shapes": ShapesChecker(), "moving_shapes": MovingShapesChecker(),
                                "notes": NotesChecker(), "speech": SpeechChecker()}


def checker_for(source: str) -> Checker:
    if source not in CHECKERS:
        raise ValueError(f"no analytic checker for data source {source!r}: only {', '.join(CHECKERS)} "
                         "has exact captions to check against")
    return CHECKERS[source]
