"""The mixture order of a many-modality run: which (modality, task, item) each sample of a batch is.

A run trains one backbone on several modality runs at once. Every draw picks a modality with
probability proportional to its `mix_weight`, a task (`caption` with the modality's
`caption_weight`, else `generate`), and the next item of that modality's own seeded permutation
(`DataOrder`). Modality and task come in blocks of `BLOCK` draws from a generator seeded by
(seed, block), so the order is a pure function of the seed; the position (block, offset, and
every modality's permutation position) is saved in checkpoints for exact resume. With one
modality and no captioning it draws exactly the items `DataOrder(n, seed)` would.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trainers.common import DataOrder

TASKS = ("generate", "caption")
BLOCK = 4096  # draws per seeded block of modality/task choices


class Draw(NamedTuple):
    modality: str
    task: str  # "generate" (text, then the modality) or "caption" (the modality, then its text)
    index: int  # item of the modality's tokens


class MixtureOrder:
    def __init__(self, sizes: dict[str, int], mix_weights: dict[str, float], caption_weights: dict[str, float],
                 seed: int) -> None:
        if not sizes:
            raise ValueError("a mixture needs at least one modality")
        for name in sizes:
            if not mix_weights[name] > 0:
                raise ValueError(f"modalities.{name}.mix_weight must be > 0, got {mix_weights[name]}")
            if not 0 <= caption_weights[name] <= 1:
                raise ValueError(f"modalities.{name}.caption_weight must be in [0, 1], got {caption_weights[name]}")
        self.names = list(sizes)
        total = sum(mix_weights.values())
        self.shares = torch.tensor([mix_weights[n] / total for n in self.names], dtype=torch.float64)  # (M,)
        self.caption = torch.tensor([caption_weights[n] for n in self.names], dtype=torch.float64)  # (M,)
        # The first modality keeps the run's own seed, so a one-modality run orders its data as before.
        self.orders = {name: DataOrder(sizes[name], seed + 7_907 * k) for k, name in enumerate(self.names)}
        self.seed, self.block, self.offset = seed, 0, 0

    def _choices(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(modality index (BLOCK,), caption task (BLOCK,) bool) of one seeded block."""
        generator = torch.Generator().manual_seed(self.seed * 104_729 + block)
        if len(self.names) == 1:
            modality = torch.zeros(BLOCK, dtype=torch.long)  # (BLOCK,)
        else:
            modality = torch.multinomial(self.shares, BLOCK, replacement=True, generator=generator)  # (BLOCK,)
        caption = torch.rand(BLOCK, generator=generator, dtype=torch.float64) < self.caption[modality]  # (BLOCK,)
        return modality, caption

    def take(self, count: int) -> list[Draw]:
        draws: list[Draw] = []
        while len(draws) < count:
            modality, caption = self._choices(self.block)
            stop = min(BLOCK, self.offset + count - len(draws))
            for m, c in zip(modality[self.offset:stop].tolist(), caption[self.offset:stop].tolist()):
                name = self.names[m]
                draws.append(Draw(name, TASKS[int(c)], self.orders[name].take(1)[0]))
            self.offset = stop
            if self.offset == BLOCK:
                self.block, self.offset = self.block + 1, 0
        return draws

    def state_dict(self) -> dict:
        return {"block": self.block, "offset": self.offset,
                "orders": {name: order.state_dict() for name, order in self.orders.items()}}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["orders"]) != sorted(self.names):
            raise ValueError(f"the checkpoint's mixture has {sorted(state['orders'])}, this run {sorted(self.names)}")
        self.block, self.offset = int(state["block"]), int(state["offset"])
        for name, order in self.orders.items():
            order.load_state_dict(state["orders"][name])
