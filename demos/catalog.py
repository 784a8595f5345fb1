"""The pipelines a demo offers: found under a folder, loaded once, one generation at a time each.

`find_pipelines(root)` takes a pipeline folder, or a folder of runs searched for `pipeline.json`
(hidden folders such as an interrupted save's `.tmp-pipeline` are skipped, and a pipeline saved
twice, like the quickstart's `ar_run/pipeline` and its copy `pipeline`, is offered once: the
manifests' weight hashes say they are the same). A folder that fails to load is listed with its
one-line error instead of stopping the page. Example prompts come from the data source each
modality was trained on (`Pipeline.sources`) through its analytic checker's grammar
(`CHECKERS[source].prompts`); a source without a checker gives none. Gradio is not imported here.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import NamedTuple

from mmar.evaluation.checkers import CHECKERS
from mmar.pipeline import Pipeline

logger = logging.getLogger(__name__)

QUICKSTART = "mmar quickstart --out runs/quickstart"
NUM_EXAMPLES = 6


class Entry(NamedTuple):
    label: str  # what the model picker shows: the folder relative to the demo's root
    path: Path
    pipeline: Pipeline | None  # None when it failed to load
    error: str  # one line, empty when loaded
    lock: threading.Lock  # one generation at a time on this model (its KV cache is model state)


def find_pipelines(root: str | Path) -> list[Path]:
    """Pipeline folders at or under `root`, shallowest first, each set of weights once."""
    root = Path(root)
    if (root / "pipeline.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    found = sorted((p.parent for p in root.rglob("pipeline.json")
                    if not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: (len(p.parts), str(p)))
    seen, unique = set(), []
    for folder in found:
        try:
            weights = json.dumps(json.loads((folder / "pipeline.json").read_text()).get("sha256"), sort_keys=True)
        except (OSError, ValueError, AttributeError):  # unreadable or not an object: offered, its load error shown
            weights = str(folder)
        if weights not in seen:
            seen.add(weights)
            unique.append(folder)
    return unique


def load_entries(root: str | Path, device: str = "cpu") -> list[Entry]:
    """Load every pipeline found under `root`; a broken one becomes an Entry with its error line."""
    root = Path(root)
    entries = []
    for folder in find_pipelines(root):
        label = folder.name if folder == root else str(folder.relative_to(root))
        try:
            entries.append(Entry(label, folder, Pipeline.from_pretrained(folder, device=device), "", threading.Lock()))
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            line = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning("skipping %s: %s", folder, line)
            entries.append(Entry(label, folder, None, line, threading.Lock()))
    return entries


def example_prompts(pipeline: Pipeline, modalities: list[str], count: int = NUM_EXAMPLES) -> list[str]:
    """Prompts in the grammar of the data the modalities were trained on (none for a source without a checker)."""
    prompts: list[str] = []
    for modality in modalities:
        source = pipeline.sources.get(modality)
        if source in CHECKERS:
            prompts += CHECKERS[source].prompts(count, seed=7 * len(prompts))
    return list(dict.fromkeys(prompts))[:count]


def describe(entry: Entry) -> str:
    """One line per pipeline for the page: its modalities and their heads."""
    if entry.pipeline is None:
        return f"`{entry.label}`: not loaded ({entry.error})"
    pipe = entry.pipeline
    parts = [f"{m} ({pipe.spec(m).medium}, {pipe.head_of(m)})" for m in pipe.modalities]
    return f"`{entry.label}`: " + ", ".join(parts)
