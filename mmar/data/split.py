"""The seeded validation split every trainer and evaluator shares.

A pure function of (number of items, requested size, seed): the tokenizer trainer, the AR trainer
and `mmar eval` all hold out the same items of the same data config, so an image the model never
trained on is also one its tokenizer never saw, and the feature net of `mmar eval` is fitted on
exactly the held-out images. At most a fifth of the data is held out, so a tiny folder still trains.
"""

from __future__ import annotations

import torch

MAX_FRACTION = 0.2  # never hold out more than this share of the items


def validation_size(num_items: int, requested: int) -> int:
    """How many items are held out: `requested`, capped at a fifth of the data (0 keeps everything)."""
    return max(0, min(requested, int(num_items * MAX_FRACTION)))


def validation_split(num_items: int, requested: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices), each sorted and disjoint, together 0..num_items-1."""
    if num_items < 1:
        raise ValueError("the dataset is empty: nothing to split")
    count = validation_size(num_items, requested)
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 6_007 + 17))  # (N,)
    return order[count:].sort().values, order[:count].sort().values  # (N - n,), (n,)
