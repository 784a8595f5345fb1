"""The head contract: what every output head of the shared transformer provides.

A head sees flat hidden states only (no sequences, masks or modalities):

- `loss(hidden (N, D), target (N, *target_shape)) -> HeadOutput(loss_sum, count, metrics)`;
  targets are local (0..codebook_size-1 per level, or float latents); -100 marks "no target".
  The trainer divides the summed loss by the global count (over heads, micro-batches and ranks).
- `sample(hidden, *, guidance_scale, temperature, top_k, top_p, generator, **options)
  -> (N, *target_shape)`. With guidance (`guidance_scale != 1`) `hidden` is (2N, D): rows [:N]
  conditional, rows [N:] unconditional, and the head mixes them itself. A 0-d tensor guidance scale
  always guides: the compiled decode step passes each step's scale as data.
- `draw_noise(num_rows, generator, device, dtype)`: every random number one `sample` call of
  `num_rows` output rows uses; `sample(..., noise=that)` then draws nothing itself and gives what
  `sample(..., generator=the same generator)` gives. The decode step draws the noise outside its
  compiled region, so the compiled function is pure and eager and compiled draws agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

IGNORE_INDEX = -100


class HeadOutput(NamedTuple):
    loss_sum: torch.Tensor  # () summed over the counted targets
    count: torch.Tensor  # () long: number of targets that contributed
    metrics: dict[str, torch.Tensor]  # () each, summed like loss_sum (divide by count to report)


@dataclass(frozen=True)
class HeadSpec:
    """What a head predicts, derived from the backbone and the tokenizer it serves."""

    dim: int  # D of the hidden states
    codebook_size: int = 0  # V per level (discrete heads)
    num_codebooks: int = 1  # Q levels predicted in parallel (discrete heads)
    latent_channels: int = 0  # C of continuous targets (flow head)


class Head(nn.Module):
    """Base class: subclasses set `Config` (a dataclass) and implement the contract."""

    Config: ClassVar[type]
    #: torch dtype of targets and samples: torch.long for discrete heads, torch.float for flow.
    target_dtype: ClassVar[torch.dtype]
    #: the token kinds this head can predict: "codes" (discrete, causal), "scales" (multi-scale
    #: codes, one scale a step) or "vectors" (continuous latents). Pairing is checked before training.
    token_kinds: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any, spec: HeadSpec) -> None:
        super().__init__()
        self.config = config
        self.spec = spec

    @property
    def target_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> HeadOutput:
        raise NotImplementedError

    def sample(
        self,
        hidden: torch.Tensor,
        *,
        guidance_scale: float | torch.Tensor = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        **options: Any,
    ) -> torch.Tensor:
        raise NotImplementedError

    def draw_noise(self, num_rows: int, generator: torch.Generator | None, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
        """The random numbers of one `sample` call with `num_rows` output rows (hidden states of `dtype`)."""
        raise NotImplementedError
