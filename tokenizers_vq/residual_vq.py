"""Residual vector quantisation: Q codebooks, each quantising what the levels before it left over.

Ideas and where they come from:

- residual VQ for neural audio codecs, and quantizer dropout (train with a random number of
  levels so that the first q levels alone already decode well): Zeghidour et al. 2021,
  "SoundStream", arXiv:2107.03312, section 3.3; Défossez et al. 2022, "EnCodec", arXiv:2210.13438;
- every level is the project's own `VectorQuantizer` (Euclidean lookup, EMA codebook, dead-code
  restart), used through its public building blocks.

The straight-through estimator is applied once, to the sum of all levels (quantized = z +
(sum of codes - z).detach()), so the encoder gets the decoder's gradient exactly once; each level
adds its commitment loss on its own residual.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenizers_vq.vector_quantizer import QuantizerOutput, VectorQuantizer, usage_statistics


class ResidualVQ(nn.Module):
    """features (..., dim) -> Q codes per vector (..., Q); level q quantises the residual after levels < q."""

    def __init__(self, dim: int, codebook_size: int, num_levels: int, *, ema_decay: float = 0.99,
                 commitment_weight: float = 0.25, dead_code_steps: int = 50, quantizer_dropout: float = 0.5) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"need at least one residual level, got {num_levels}")
        if not 0 <= quantizer_dropout <= 1:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.dim, self.codebook_size, self.num_levels = dim, codebook_size, num_levels
        self.quantizer_dropout = quantizer_dropout
        self.levels = nn.ModuleList(
            VectorQuantizer(dim, dim, codebook_size, normalize=False, codebook_update="ema", ema_decay=ema_decay,
                            commitment_weight=commitment_weight, dead_code_steps=dead_code_steps)
            for _ in range(num_levels))

    def _active_levels(self, batch: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) long: how many levels each item uses this training step (all of them outside dropout)."""
        active = torch.full((batch,), self.num_levels, dtype=torch.long)  # (B,)
        if self.training and self.quantizer_dropout > 0 and self.num_levels > 1:
            source = generator if generator is not None and generator.device.type == "cpu" else None
            dropped = torch.rand(batch, generator=source) < self.quantizer_dropout  # (B,)
            fewer = torch.randint(1, self.num_levels, (batch,), generator=source)  # (B,) in [1, Q)
            active = torch.where(dropped, fewer, active)  # (B,)
        return active.to(device)

    def forward(self, features: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """features (B, n, dim) -> QuantizerOutput(quantized (B, n, dim), indices (B, n, Q), loss, metrics).

        In training a random share of the items (`quantizer_dropout`) keeps only its first 1..Q-1
        levels; the codebooks are updated only from the vectors that reach them.
        """
        batch, n, _ = features.shape
        active = self._active_levels(batch, features.device, generator)  # (B,)
        residual = features.detach()  # (B, n, dim): the codebooks never push gradients into the encoder
        total = torch.zeros_like(features)  # (B, n, dim)
        loss = torch.zeros((), device=features.device)  # ()
        indices, statistics = [], {}
        for q, level in enumerate(self.levels):
            use = (active > q)[:, None, None].to(features.dtype)  # (B, 1, 1): 1 where level q is used
            flat = residual.reshape(-1, self.dim)  # (B*n, dim)
            index = level.lookup(flat)  # (B*n,)
            codes = level.embed(index).view_as(residual)  # (B, n, dim)
            # commitment: the encoder output (minus what earlier levels took) is pulled towards its code
            committed = features - (total.detach() if q else 0)  # (B, n, dim) the residual with gradient
            commitment = ((committed - codes.detach()).pow(2) * use).sum() / (use.sum() * n * self.dim).clamp_min(1)
            loss = loss + level.commitment_weight * commitment
            if self.training:
                keep = use.expand(-1, n, 1).reshape(-1).bool()  # (B*n,)
                if keep.any():
                    statistics[q] = level.update(flat[keep], index[keep], generator)
                codes = level.embed(index).view_as(residual)  # (B, n, dim) after the update, as lookup will see it
            total = total + codes * use  # (B, n, dim)
            residual = residual - codes.detach() * use  # (B, n, dim)
            indices.append(index.view(batch, n))
        quantized = features + (total - features).detach()  # (B, n, dim): value of the codes, gradient of features
        indices = torch.stack(indices, dim=-1)  # (B, n, Q)
        counts = torch.bincount(indices[:, :, 0].reshape(-1), minlength=self.codebook_size).float()  # (K,)
        metrics = {"commitment": loss.detach(), **{f"{k}_level0": v for k, v in usage_statistics(counts).items()},
                   "active_levels": active.float().mean(),
                   "restarted": sum((s["restarted"] for s in statistics.values()), torch.zeros((), device=features.device))}
        return QuantizerOutput(quantized, indices, loss, metrics)

    @torch.no_grad()
    def encode(self, features: torch.Tensor, num_levels: int | None = None) -> torch.Tensor:
        """features (B, n, dim) -> codes (B, n, Q') long, the first Q' = num_levels levels (default all)."""
        levels = self._levels(num_levels)
        residual = features  # (B, n, dim)
        indices = []
        for level in self.levels[:levels]:
            index = level.lookup(residual.reshape(-1, self.dim)).view(residual.shape[:-1])  # (B, n)
            residual = residual - level.embed(index)  # (B, n, dim)
            indices.append(index)
        return torch.stack(indices, dim=-1)  # (B, n, Q')

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """codes (..., Q') long, Q' <= Q (the first levels) -> features (..., dim): the sum of their codes."""
        self._levels(indices.shape[-1])
        return sum(level.embed(indices[..., q]) for q, level in enumerate(self.levels[:indices.shape[-1]]))  # (..., dim)

    def _levels(self, num_levels: int | None) -> int:
        levels = self.num_levels if num_levels is None else num_levels
        if not 1 <= levels <= self.num_levels:
            raise ValueError(f"this residual quantiser has levels 1..{self.num_levels}, asked for {levels}")
        return levels
