"""Evaluate a pipeline: prompt-following per modality and caption accuracy, by the analytic checker of
the modality's data source, or — for images from a source without one (Fashion-MNIST, a user's
folder) — by a feature checker fitted on the held-out split the pipeline's training never saw.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmar.evaluation.checkers import CHECKERS, checker_for


def source_of(pipeline, modality: str) -> str:
    """The data source `modality` was trained on (pipelines from before sources were recorded: shapes)."""
    return pipeline.sources.get(modality, "shapes")


def checker_of(pipeline, modality: str, cache: str | Path, data: dict | None = None):
    """The checker of `modality`: its source's analytic one, else (images) a feature checker.

    The feature checker's net is fitted on the held-out split of the data config the pipeline was
    trained on (`data` overrides it, e.g. another folder) and cached under `cache`.
    """
    data = {**pipeline.data.get(modality, {}), **(data or {})}
    source = data.get("source", source_of(pipeline, modality))
    if source in CHECKERS:
        return CHECKERS[source]
    if pipeline.spec(modality).medium != "image" or not data:
        return checker_for(source)  # the error names what has a checker
    from mmar.data import make_source
    from mmar.data.split import validation_split
    from mmar.evaluation.feature_checker import FeatureChecker

    items = make_source(**data)
    _, held_out = validation_split(len(items), data.get("validation", 1000), data.get("seed", 0))
    if len(held_out) < 10:
        raise ValueError(f"{modality}: only {len(held_out)} held-out items to fit a feature net on; "
                         "train with a larger data.validation (or more data)")
    pairs = [items[i] for i in held_out.tolist()]
    images = torch.stack([image for image, _ in pairs])  # (n, 3, H, W)
    return FeatureChecker.build(images, [text for _, text in pairs], cache_dir=Path(cache), seed=data.get("seed", 0))


@torch.no_grad()
def evaluate(pipeline, modality: str | None = None, num_prompts: int = 64, per_prompt: int = 4, seed: int = 0,
             batch_prompts: int = 16, checker=None, **sampling) -> dict:
    """Prompt-following of one modality of `pipeline` on its checker's fixed prompts (default: the source's
    analytic checker). A sampling setting not given is the pipeline's stored default."""
    modality = modality or pipeline.modality
    checker = checker or checker_for(source_of(pipeline, modality))
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
