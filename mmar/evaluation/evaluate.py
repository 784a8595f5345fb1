"""Evaluate a pipeline with its analytic checkers: prompt-following per modality, caption accuracy."""

from __future__ import annotations

import torch

from mmar.evaluation.checkers import checker_for


def source_of(pipeline, modality: str) -> str:
    """The data source `modality` was trained on (pipelines from before sources were recorded: shapes)."""
    return pipeline.sources.get(modality, "shapes")


@torch.no_grad()
def evaluate(pipeline, modality: str | None = None, num_prompts: int = 64, per_prompt: int = 4, seed: int = 0,
             batch_prompts: int = 16, **sampling) -> dict:
    """Prompt-following of one modality of `pipeline` on its checker's fixed prompts."""
    modality = modality or pipeline.modality
    checker = checker_for(source_of(pipeline, modality))
    prompts = checker.prompts(num_prompts, seed)
    outputs, expected = [], []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        outputs += pipeline(chunk, num_images_per_prompt=per_prompt, modality=modality, seed=seed + start, **sampling)
        expected += [p for p in chunk for _ in range(per_prompt)]
    return checker.score(outputs, expected)


@torch.no_grad()
def evaluate_captions(pipeline, modality: str | None = None, num_items: int = 64, per_item: int = 4, seed: int = 0,
                      temperature: float = 1.0, batch_items: int = 64) -> dict:
    """Caption accuracy: `per_item` captions of each of `num_items` held-out items, parsed and checked.

    The first caption of each item is greedy (temperature 0), the others sampled at `temperature`."""
    modality = modality or pipeline.caption_modality()
    checker = checker_for(source_of(pipeline, modality))
    items, truths = checker.caption_items(num_items, seed)
    captions, expected = [], []
    for k in range(per_item):
        for start in range(0, num_items, batch_items):
            chunk = items[start:start + batch_items]
            captions += pipeline.caption(chunk, modality=modality, temperature=0.0 if k == 0 else temperature,
                                         seed=seed + 1_000 * k + start)
            expected += truths[start:start + batch_items]
    report = checker.score_captions(captions, expected)
    report["examples"] = [{"truth": t, "caption": c} for t, c in list(zip(expected, captions))[:8]]
    return report
