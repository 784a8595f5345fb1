"""Finite Scalar Quantization: round each of a few bounded channels to a fixed grid of levels.

Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv:2309.15505.
With levels (L_1, ..., L_n) the implicit codebook is the product grid of prod(L_i) points; there
is no codebook to learn, no commitment loss, and no dead codes to restart. A code is one index,
the mixed-radix number of its per-channel levels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tokenizers_vq.vector_quantizer import QuantizerOutput, usage_statistics


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (x.round() - x).detach()  # same shape as x


class FiniteScalarQuantizer(nn.Module):
    """features (..., input_dim) -> in_proj -> n = len(levels) bounded channels -> rounded -> out_proj.

    Channel i takes L_i values, normalised to [-1, 1]: {-1, 0, 1} for L = 3, {-1, -0.5, 0, 0.5}
    for L = 4 (an even L is shifted by half a step so that it has exactly L values).
    """

    def __init__(self, input_dim: int, levels: tuple[int, ...]) -> None:
        super().__init__()
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty tuple of integers >= 2, got {levels}")
        self.levels_tuple = tuple(int(level) for level in levels)
        self.codebook_size = math.prod(self.levels_tuple)
        num_channels = len(self.levels_tuple)
        self.in_proj = nn.Linear(input_dim, num_channels)
        self.out_proj = nn.Linear(num_channels, input_dim)
        levels_tensor = torch.tensor(self.levels_tuple, dtype=torch.long)  # (n,)
        basis = torch.cumprod(torch.tensor((1, *self.levels_tuple[:-1]), dtype=torch.long), 0)  # (n,)
        # Derived from the config, so not saved.
        self.register_buffer("levels", levels_tensor, persistent=False)  # (n,)
        self.register_buffer("basis", basis, persistent=False)  # (n,) mixed-radix place values

    def bound(self, latents: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """Squash (..., n) into channel i's range, so rounding gives exactly L_i integer values."""
        half_range = (self.levels - 1) * (1 + eps) / 2  # (n,)
        offset = (self.levels % 2 == 0).float() * 0.5  # (n,) even levels: half-step shift
        shift = torch.atanh(offset / half_range)  # (n,) keeps 0 input at the centre of the range
        return torch.tanh(latents + shift) * half_range - offset  # (..., n)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., n) grid values in [-1, 1], straight-through."""
        half_width = (self.levels // 2).float()  # (n,)
        return round_straight_through(self.bound(latents)) / half_width  # (..., n)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Grid values (..., n) -> indices (...) long."""
        half_width = self.levels // 2  # (n,)
        digits = (codes * half_width).round().long() + half_width  # (..., n) in [0, L_i)
        return (digits * self.basis).sum(-1)  # (...)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...) long -> grid values (..., n) in [-1, 1]."""
        half_width = self.levels // 2  # (n,)
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels  # (..., n)
        return (digits - half_width).float() / half_width  # (..., n)

    def forward(self, features: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """features (..., input_dim) -> QuantizerOutput(quantized (..., input_dim), indices (...), 0, metrics).

        `generator` is unused (FSQ is deterministic); it is accepted for the quantiser interface.
        """
        codes = self.quantize(self.in_proj(features))  # (..., n)
        indices = self.codes_to_indices(codes.detach())  # (...)
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()  # (K,)
        loss = torch.zeros((), device=features.device)  # () FSQ needs no auxiliary loss
        return QuantizerOutput(self.out_proj(codes), indices, loss, usage_statistics(counts))

    def indices_to_features(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...) long -> (..., input_dim): what `forward` gives for those codes."""
        return self.out_proj(self.indices_to_codes(indices))  # (..., input_dim)
