"""The data-size rule of `mmar train --tokenizer X` (the one-modality shorthand): a small folder gets
fewer steps, a smaller model and more regularisation, and the command says what it chose and why.

The rule, for N training items (after the held-out split) and batch size B:

- steps: at most MAX_EPOCHS passes over the data, `ceil(MAX_EPOCHS * N / B)`, and at least
  MIN_STEPS; never more than the config asked for. Measured on a 3,000-image Fashion-MNIST
  folder with the default model: the validation loss bottoms out after about 8 passes and rises
  after, while the training loss keeps falling (the README's "Your own images").
- regularisation: below SMALL_DATA items, `model.dropout` 0.1 and `optim.weight_decay` 0.1.
- model size: below TINY_DATA items, `model.dim` 128 and `model.num_layers` 3 (fewer weights to
  memorise with).

A key the user set (`--set optim.steps=...`) is never changed. A mixture config (`--config`)
is the user's own recipe and is never resized.
"""

from __future__ import annotations

import dataclasses
import math

from mmar.data import make_source
from mmar.data.split import validation_size

MAX_EPOCHS = 8
MIN_STEPS = 200
SMALL_DATA = 10_000
TINY_DATA = 2_000


def training_items(data) -> int:
    """How many items a data config trains on: the source's, less the held-out split."""
    total = len(make_source(**dataclasses.asdict(data)))
    return total - validation_size(total, data.validation)


def fit_to_data(config, num_train: int, given: set[str]) -> list[str]:
    """Resize one-modality `config` (an ARTrainConfig) to `num_train` items, in place.

    `given`: the keys the user set (`optim.steps`, ...), which stay. Returns one line per change.
    """
    changes: list[str] = []

    def choose(key: str, value, why: str) -> None:
        section, name = key.split(".")
        target = getattr(config, section)
        if key in given or getattr(target, name) == value:
            return
        changes.append(f"{key} {getattr(target, name)} -> {value} ({why})")
        setattr(config, section, dataclasses.replace(target, **{name: value}))

    epochs_steps = max(MIN_STEPS, math.ceil(MAX_EPOCHS * num_train / config.optim.batch_size))
    if epochs_steps < config.optim.steps:
        choose("optim.steps", epochs_steps, f"{MAX_EPOCHS} passes over {num_train:,} training items")
    if num_train < SMALL_DATA:
        choose("model.dropout", 0.1, f"fewer than {SMALL_DATA:,} items")
        choose("optim.weight_decay", 0.1, f"fewer than {SMALL_DATA:,} items")
    if num_train < TINY_DATA and "model.num_heads" not in given:
        choose("model.dim", 128, f"fewer than {TINY_DATA:,} items")
        choose("model.num_layers", 3, f"fewer than {TINY_DATA:,} items")
        if config.model.dim % config.model.num_heads or (config.model.dim // config.model.num_heads) % 2:
            choose("model.num_heads", 4, "dim 128 needs a divisor")
    return changes
