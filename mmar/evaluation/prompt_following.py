"""Prompt-following accuracy on the shapes grammar, read by the analytic checker.

A fixed, balanced prompt list (every colour, shape and position appears about equally often) and a
score over generated images: the fraction that match each attribute and all three at once, in the
spirit of GenEval's per-attribute accuracies (Ghosh et al. 2023), with geometry in place of a detector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmar.data.shapes import COLORS, POSITIONS, SHAPES, caption
from mmar.evaluation.shapes_checker import check

ATTRIBUTES = ("color", "shape", "position", "all")


def evaluation_prompts(num_prompts: int = 64, seed: int = 0) -> list[str]:
    """`num_prompts` distinct shapes captions (1..120), deterministic in (num_prompts, seed).

    Prompt i takes colour i mod 8, shape i mod 3 and position i mod 5: 8, 3 and 5 are coprime, so
    120 consecutive indices are all 120 captions (Chinese remainder theorem) and any run of them is
    balanced over every attribute. `seed` picks where the run starts.
    """
    colors, positions = list(COLORS), list(POSITIONS)
    total = len(colors) * len(SHAPES) * len(positions)
    if not 1 <= num_prompts <= total:
        raise ValueError(f"num_prompts must be in 1..{total} (the number of distinct captions), got {num_prompts}")
    start = seed % total
    indices = [(start + i) % total for i in range(num_prompts)]
    return [caption(colors[i % len(colors)], SHAPES[i % len(SHAPES)], positions[i % len(positions)]) for i in indices]


def cycled(choices: Sequence[str], num_prompts: int, seed: int) -> list[str]:
    """`num_prompts` of `choices` in a seeded order, every one before any repeats, then again."""
    order = torch.randperm(len(choices), generator=torch.Generator().manual_seed(seed)).tolist()
    return [choices[order[i % len(order)]] for i in range(num_prompts)]


def held_out_items(dataset, num_items: int) -> tuple[torch.Tensor, list[str]]:
    """The first `num_items` (item, caption) pairs of a held-out dataset -> (items stacked (N, ...), captions)."""
    items = [dataset[i] for i in range(num_items)]
    return torch.stack([item for item, _ in items]), [text for _, text in items]


def _as_list(images: Sequence | torch.Tensor) -> list:
    """A batch tensor (B, 3, H, W) or any sequence of images -> list of single images."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected a batch (B, 3, H, W), got shape {tuple(images.shape)}")
        return list(images.unbind(0))  # B x (3, H, W)
    return list(images)


def score(images: Sequence[torch.Tensor | Image.Image | np.ndarray] | torch.Tensor,
          captions: Sequence[str]) -> dict:
    """Check each image against its caption -> {"color", "shape", "position", "all": fraction, "count": n}.

    Images are tensors (3, H, W) in [-1, 1], PIL images, or one batch tensor (B, 3, H, W).
    """
    images = _as_list(images)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("nothing to score: no images")
    checks = [check(image, text) for image, text in zip(images, captions)]
    count = len(checks)
    return {
        "color": sum(c.color for c in checks) / count,
        "shape": sum(c.shape for c in checks) / count,
        "position": sum(c.position for c in checks) / count,
        "all": sum(c.all for c in checks) / count,
        "count": count,
    }


#: scores that are distances, not fractions (printed as numbers, lower is better)
DISTANCES = ("frechet",)


def report_markdown(scores: dict, title: str = "Prompt following (shapes)", unit: str = "images") -> str:
    """A small markdown table of a `score` result (an analytic checker's or the feature checker's)."""
    lines = [f"### {title}", "", "| attribute | score |", "|---|---|"]
    # The checker's own attributes (shapes: position; moving shapes: direction), "all" last.
    names = [name for name in scores if isinstance(scores[name], float) and name not in ("all", "parsed", "judge_accuracy")]
    names += ["all"] if "all" in scores else []
    lines += [f"| {name} | {scores[name]:.3f} |" if name in DISTANCES else f"| {name} | {100 * scores[name]:.1f}% |"
              for name in names]
    if "judge_accuracy" in scores:
        known = scores["judge_accuracy"]
        how = ("heard by the spoken-word judge mmar trains itself (`mmar.evaluation.speech_judge`" +
               (f", {100 * known:.1f}% right on held-out espeak-ng voices)" if known is not None else ")"))
    elif "feature_net_accuracy" in scores or "frechet" in scores:
        how = "scored by the feature net fitted on held-out real images (`mmar.evaluation.feature_checker`)"
    else:
        how = "checked analytically (`mmar.evaluation`)"
    lines += ["", f"{scores['count']} {unit}, {how}."]
    return "\n".join(lines) + "\n"
