"""Validation for the AR trainer: held-out loss and accuracy per head, the best checkpoint, and a
one-line warning when the model memorises its training items.

Every run's data is split once by `mmar.data.split` (seeded by the data config; the tokenizer
trainer and `mmar eval` hold out the same items). `Validator` measures the EMA weights — what the
pipeline exports — in eval mode on every held-out item with its own caption (the generate task, no
caption dropout), and on as many fixed training items ("fit"). The two are the same measurement on
seen and unseen data, so their gap is what memorising looks like (validation loss rising while the
fit loss keeps falling: early stopping's signal, Prechelt 1998). `BestCheckpoint` keeps the
pipeline with the lowest validation loss in `<out>/best/` beside the latest checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from mmar.packing import Segment, pack

logger = logging.getLogger(__name__)

#: validation loss this far above its best (relative), with a fit/validation gap this large, is memorising
RISE, GAP = 0.02, 0.10


class Validator:
    """Fixed packed batches of held-out and training items; `__call__(model)` -> logged metrics.

    `items[split][name]` are item indices of run `name`'s tokens for split "validation" or "fit".
    """

    def __init__(self, data: dict, items: dict[str, dict[str, torch.Tensor]], caption_bytes: dict[str, list],
                 tokenizers: dict, layout, weights: dict[str, float], device, batch_size: int = 128) -> None:
        self.weights, self.device = weights, device
        self.batches: dict[str, list] = {}
        for split, per_run in items.items():
            self.batches[split] = []
            for name, indices in per_run.items():
                for chunk in indices.split(batch_size):
                    tokens = data[name].tokens[chunk].to(device)  # (b, ...)
                    inputs = tokenizers[name].teacher_inputs(tokens).float().cpu() \
                        if layout.modalities[name].kind == "scales" else None  # (b, L-1, C)
                    samples = [[Segment("text", caption_bytes[name][i]),
                                Segment(name, tokens[j].cpu(), None if inputs is None else inputs[j])]
                               for j, i in enumerate(chunk.tolist())]
                    self.batches[split].append(pack(samples, layout))

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        """{"<split>/loss/<head>", "<split>/accuracy/<head>" (discrete heads), "<split>/loss" (weighted sum)}."""
        values: dict[str, float] = {}
        for split, batches in self.batches.items():
            sums, correct, counts = {}, {}, {}
            for batch in batches:
                for head, output in model(batch.to(self.device)).items():
                    sums[head] = sums.get(head, 0.0) + float(output.loss_sum)
                    counts[head] = counts.get(head, 0) + int(output.count)
                    if "accuracy" in output.metrics:
                        correct[head] = correct.get(head, 0.0) + float(output.metrics["accuracy"])
            losses = {head: sums[head] / max(counts[head], 1) for head in sums}
            values.update({f"{split}/loss/{head}": loss for head, loss in losses.items()})
            values.update({f"{split}/accuracy/{head}": correct[head] / max(counts[head], 1) for head in correct})
            values[f"{split}/loss"] = sum(self.weights.get(head, 1.0) * loss for head, loss in losses.items())
        return values


class BestCheckpoint:
    """The weights with the lowest validation loss so far (a pipeline or a tokenizer folder, both saved
    atomically): `<out>/best/` and its record `<out>/best.json`.

    The folder is written first, then the record, each atomically: after a kill between the two the
    record names an older step with a higher loss, so the folder is never worse than its record says.
    """

    def __init__(self, out: Path, resume: bool) -> None:
        self.folder, self.record = out / "best", out / "best.json"
        self.step, self.loss = None, float("inf")
        if resume and self.record.is_file() and self.folder.is_dir():
            try:
                saved = json.loads(self.record.read_text())
                self.step, self.loss = int(saved["step"]), float(saved["validation_loss"])
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("ignoring %s (%s): the best checkpoint restarts from this run", self.record, error)
        elif not resume:
            self.record.unlink(missing_ok=True)  # a fresh run never exports an earlier run's best

    @property
    def exists(self) -> bool:
        return self.step is not None and self.folder.is_dir()  # written atomically: there means complete

    def offer(self, step: int, values: dict[str, float], save: Callable[[Path], object]) -> bool:
        """Keep this step if its validation loss is the lowest yet: `save(folder)` writes the pipeline."""
        loss = values["validation/loss"]
        if not loss < self.loss:
            return False
        save(self.folder)
        self.step, self.loss = step, loss
        temporary = self.record.with_name(f".tmp-{self.record.name}")
        temporary.write_text(json.dumps({"step": step, "validation_loss": loss,
                                         **{k: v for k, v in values.items() if k.startswith("validation/")}}, indent=2))
        os.replace(temporary, self.record)
        return True


def memorising(history: list[tuple[int, float, float]], best_step: int | None) -> str | None:
    """A one-line diagnosis when validation has risen past its best while the fit loss stayed below it.

    `history`: (step, validation loss, fit loss) per measurement, oldest first.
    """
    if len(history) < 2:
        return None
    step, validation, fit = history[-1]
    best = min(v for _, v, _ in history)
    if validation > best * (1 + RISE) and validation - fit > GAP * validation:
        return (f"step {step}: validation loss {validation:.3f} is {100 * (validation / best - 1):.0f}% above its best "
                f"{best:.3f} (step {best_step}) while the loss on training items is {fit:.3f}: the model is "
                f"memorising its data. The best step is exported; to do better use fewer steps (optim.steps), a "
                f"smaller model (model.dim, model.num_layers), more data, or more regularisation (model.dropout, "
                f"optim.weight_decay)")
    return None
