"""The sampling sweep that ends training: the settings that score best on held-out prompts become
the pipeline's defaults, so `mmar generate`, `pipe(...)` and the demo use them unless told otherwise.

Each modality is scored by its data source's analytic checker when it has one (prompt-following,
"all" attributes), and an image modality without one by the feature checker fitted on its held-out
images (`mmar.evaluation.feature_checker`: class-following for class-like captions, else the
Fréchet distance, lower is better). Every setting draws the same prompts with the same seeds, so
the table compares settings, not luck. A modality with nothing to score it keeps SAMPLING_DEFAULTS.
The table is written to `<out>/tuning/<modality>.json` and logged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mmar.evaluation.evaluate import checker_of, evaluate

logger = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    enabled: bool = True
    guidance: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)  # guidance scales tried
    temperature: tuple[float, ...] = (1.0,)  # temperatures tried (with every guidance scale)
    # plausibility constraints tried with every guided setting (discrete heads only; see heads/sampling.py)
    plausibility: tuple[float, ...] = (0.0, 0.05)
    guidance_schedule: str = "constant"
    num_prompts: int = 64  # prompts per setting (the checker's balanced list)
    per_prompt: int = 2  # 128 samples a setting: 64 picked cfg 2 over 3 on Fashion-MNIST, 256 then preferred 3
    seed: int = 7  # prompts and sampling seeds (not the evaluation's 0, so `mmar eval` is not the tuning set)

    LIMITS = {"num_prompts": "[1, 1024]", "per_prompt": "[1, 64]", "seed": "[0, 9.2e18]"}

    def check(self) -> None:
        if not self.guidance or not self.temperature or not self.plausibility:
            raise ValueError("tune.guidance, tune.temperature and tune.plausibility need at least one value each")
        if any(v < 0 for v in (*self.guidance, *self.temperature, *self.plausibility)) or max(self.plausibility) > 1:
            raise ValueError("tune values must be >= 0 (and plausibility at most 1)")


def metric(score: dict) -> float:
    """Higher is better: the checker's "all" accuracy, else minus the Fréchet distance."""
    return float(score["all"]) if "all" in score else -float(score["frechet"])


def settings_of(config: TuneConfig, discrete: bool) -> list[dict]:
    """Every setting the sweep tries: guidance x temperature x plausibility, the last only where it acts
    (a discrete head, with guidance)."""
    settings = []
    for guidance, temperature, plausibility in itertools.product(config.guidance, config.temperature,
                                                                 config.plausibility if discrete else (0.0,)):
        setting = {"guidance_scale": guidance, "temperature": temperature,
                   "guidance_schedule": config.guidance_schedule, "plausibility": plausibility if guidance != 1 else 0.0}
        if setting not in settings:
            settings.append(setting)
    return settings


def sweep(pipeline, modality: str, checker, config: TuneConfig, progress: bool = True) -> list[dict]:
    """Score every setting of `config` -> one row per setting: its settings and score."""
    rows = []
    discrete = pipeline.spec(modality).kind != "vectors"
    for sampling in tqdm(settings_of(config, discrete), desc=f"tuning {modality}", disable=not progress):
        score = evaluate(pipeline, modality, num_prompts=config.num_prompts, per_prompt=config.per_prompt,
                         seed=config.seed, checker=checker, **sampling)
        rows.append({"settings": sampling, "score": {k: v for k, v in score.items() if isinstance(v, (int, float))}})
    return rows


def tune_sampling(pipeline, config, out: Path, progress: bool = True) -> dict:
    """Sweep every modality of `pipeline` -> {modality: best settings} (the pipeline's `sampling`)."""
    if not config.tune.enabled:
        return dict(pipeline.sampling)
    chosen = {}
    for name in pipeline.modalities:
        try:
            checker = checker_of(pipeline, name, out / "feature_net")
        except ValueError as reason:
            logger.info("tuning: nothing scores %s (%s); it keeps the defaults", name, reason)
            continue
        rows = sweep(pipeline, name, checker, config.tune, progress)
        best = max(rows, key=lambda row: metric(row["score"]))
        chosen[name] = best["settings"]
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps({"config": dataclasses.asdict(config.tune), "rows": rows,
                                                      "chosen": best["settings"]}, indent=2) + "\n")
        logger.info("tuning %s: %s -> %s", name,
                    ", ".join(f"cfg {r['settings']['guidance_scale']:g}/T {r['settings']['temperature']:g}/"
                              f"p {r['settings']['plausibility']:g}: {metric(r['score']):.3f}" for r in rows),
                    best["settings"])
    return chosen
