"""The quickstart: tokenizer -> AR model -> samples, curves and a prompt-following report, in one run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from mmar.config import apply_overrides
from mmar.evaluation.prompt_following import evaluation_prompts, report_markdown, score
from mmar.images import captioned_grid, save_atomic
from mmar.pipeline import Pipeline
from trainers.ar import train_ar
from trainers.plots import plot_curves
from trainers.recipes import quickstart_ar, quickstart_tokenizer, tiny_ar, tiny_tokenizer
from trainers.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

GRID_PROMPTS = [f"a {c} {s} at the {p}" for c, s, p in [
    ("red", "circle", "top left"), ("green", "square", "top right"), ("blue", "triangle", "bottom left"),
    ("yellow", "circle", "bottom right"), ("magenta", "square", "center"), ("cyan", "triangle", "top left"),
    ("white", "circle", "top right"), ("orange", "square", "bottom left"), ("red", "triangle", "center"),
    ("green", "circle", "bottom right"), ("blue", "square", "top left"), ("yellow", "triangle", "top right"),
    ("magenta", "circle", "bottom left"), ("cyan", "square", "bottom right"), ("white", "triangle", "center"),
    ("orange", "circle", "top left"),
]]


@torch.no_grad()
def evaluate(pipeline: Pipeline, num_prompts: int = 64, per_prompt: int = 4, seed: int = 0,
             batch_prompts: int = 16, **sampling) -> dict:
    """Prompt-following of `pipeline` on the fixed evaluation prompts, scored by the analytic checker."""
    prompts = evaluation_prompts(num_prompts, seed=seed)
    images, captions = [], []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        images += pipeline(chunk, num_images_per_prompt=per_prompt, seed=seed + start, **sampling)
        captions += [p for p in chunk for _ in range(per_prompt)]
    return score(images, captions)


def run_quickstart(head: str = "next_token", out: str | Path = "runs/quickstart", overrides: list[str] = (),
                   tiny: bool = False, num_prompts: int = 64, per_prompt: int = 4, guidance_scale: float = 3.0) -> dict:
    """Train the tokenizer and the AR model for `head`, then sample and evaluate. Returns the report."""
    out = Path(out)
    started = time.perf_counter()
    tokenizer_overrides = [o.removeprefix("tokenizer.") for o in overrides if o.startswith("tokenizer.")]
    ar_overrides = [o.removeprefix("ar.") for o in overrides if o.startswith("ar.")]
    unknown = [o for o in overrides if not o.startswith(("tokenizer.", "ar."))]
    if unknown:
        raise ValueError(f"quickstart overrides start with 'tokenizer.' or 'ar.', got {unknown}")
    tokenizer_config = (tiny_tokenizer if tiny else quickstart_tokenizer)(head, str(out / "tokenizer_run"))
    tokenizer_dir = train_tokenizer(apply_overrides(tokenizer_config, tokenizer_overrides))
    tokenizer_seconds = time.perf_counter() - started
    ar_config = (tiny_ar if tiny else quickstart_ar)(head, str(out / "ar_run"), str(tokenizer_dir))
    pipeline_dir = train_ar(apply_overrides(ar_config, ar_overrides))
    ar_seconds = time.perf_counter() - started - tokenizer_seconds

    final = out / "pipeline"
    pipeline = Pipeline.from_pretrained(pipeline_dir)
    pipeline.save_pretrained(final)
    prompts = GRID_PROMPTS[:4] if tiny else GRID_PROMPTS
    images = pipeline(prompts, guidance_scale=guidance_scale, seed=0)
    save_atomic(captioned_grid(images, prompts, columns=8), out / "samples.png")
    plot_curves({"tokenizer": out / "tokenizer_run" / "metrics.jsonl", f"AR ({head})": out / "ar_run" / "metrics.jsonl"},
                out / "curves.png")
    scores = evaluate(pipeline, num_prompts, per_prompt, guidance_scale=guidance_scale)
    report = {
        "head": head,
        "prompt_following": scores,
        "tokenizer": json.loads((out / "tokenizer_run" / "report.json").read_text()),
        "seconds": {"tokenizer": round(tokenizer_seconds, 1), "ar": round(ar_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "sampling": {"guidance_scale": guidance_scale, "seed": 0},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = report_markdown(scores, f"mmar quickstart ({head})")
    markdown += (f"\n\nTokenizer: {report['tokenizer']}\n\nWall time: {report['seconds']} seconds "
                 f"(set-up excluded)\n")
    (out / "report.md").write_text(markdown)
    return report
