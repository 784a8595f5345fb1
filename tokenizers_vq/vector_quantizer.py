"""Vector quantiser: a learned codebook, nearest-code lookup, straight-through gradients.

Ideas and where they come from:

- codebook, straight-through estimator, commitment + codebook losses: van den Oord et al. 2017,
  "Neural Discrete Representation Learning" (VQ-VAE), arXiv:1711.00937;
- codebook updated by exponential moving averages (k-means-like) instead of by a loss: the same
  paper's appendix and Razavi et al. 2019 (VQ-VAE-2), arXiv:1906.00446;
- l2-normalised codes in a low-dimensional space with in/out projections (cosine lookup):
  Yu et al. 2022 (ViT-VQGAN), arXiv:2110.04627, as used by LlamaGen (Sun et al. 2024,
  arXiv:2406.06525);
- dead-code restart from current encoder outputs: Dhariwal et al. 2020 (Jukebox),
  arXiv:2005.00341, and Zeghidour et al. 2021 (SoundStream), arXiv:2107.03312.

The pieces (`project_in`, `lookup`, `embed`, `update`, `project_out`) are public so that the
multi-scale residual tokenizer can run its own loop over scales with the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    """What a quantiser's forward returns (the same for `VectorQuantizer` and FSQ)."""

    quantized: torch.Tensor  # (..., input_dim): codes projected out; gradients pass straight through
    indices: torch.Tensor  # (...) long in [0, codebook_size)
    loss: torch.Tensor  # () weighted commitment (+ codebook) loss; 0 where there is none
    metrics: dict[str, torch.Tensor]  # 0-dim detached tensors


def usage_statistics(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fraction of codes used and perplexity (exp of the code entropy) from per-code counts (K,)."""
    probabilities = counts / counts.sum().clamp_min(1)  # (K,)
    entropy = -(probabilities * probabilities.clamp_min(1e-10).log()).sum()  # ()
    return {"usage": (counts > 0).float().mean(), "perplexity": entropy.exp()}


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser over `codebook_size` codes of `code_dim`, fed by `input_dim` features.

    `normalize=True` l2-normalises inputs and codes (cosine lookup); `False` is a plain Euclidean
    lookup (VAR's residual quantiser). `codebook_update` is "ema" (moving-average k-means; the
    codebook is a buffer) or "loss" (the codebook is a parameter trained by the codebook loss).
    A code unused for `dead_code_steps` consecutive training steps is re-initialised from a random
    vector of the current batch (0 disables restarts). All codes start out "dead", so the first
    training step initialises the codebook from data. Updates happen only in training mode.
    """

    def __init__(self, input_dim: int, code_dim: int, codebook_size: int, *, normalize: bool = True,
                 codebook_update: str = "ema", ema_decay: float = 0.99, commitment_weight: float = 0.25,
                 dead_code_steps: int = 50) -> None:
        super().__init__()
        if codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {codebook_update!r}")
        if codebook_size < 1 or code_dim < 1:
            raise ValueError(f"need codebook_size >= 1 and code_dim >= 1, got {codebook_size}, {code_dim}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.normalize, self.codebook_update = normalize, codebook_update
        self.ema_decay, self.commitment_weight, self.dead_code_steps = ema_decay, commitment_weight, dead_code_steps
        same = input_dim == code_dim
        self.in_proj = nn.Identity() if same else nn.Linear(input_dim, code_dim)
        self.out_proj = nn.Identity() if same else nn.Linear(code_dim, input_dim)
        codebook = torch.randn(codebook_size, code_dim)  # (K, d)
        codebook = F.normalize(codebook, dim=-1) if normalize else codebook * code_dim**-0.5  # (K, d)
        if codebook_update == "loss":
            self.codebook = nn.Parameter(codebook)  # (K, d)
        else:
            self.register_buffer("codebook", codebook)  # (K, d) = embed_sum / cluster_size
            self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,) EMA of assignment counts
            self.register_buffer("embed_sum", codebook.clone())  # (K, d) EMA of assigned-vector sums
        # Steps since each code was last used; starting at the threshold makes step 1 a data init.
        self.register_buffer("unused_steps", torch.full((codebook_size,), max(dead_code_steps, 0), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # () training steps seen

    # --- building blocks -----------------------------------------------------------------------
    def project_in(self, features: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., code_dim), l2-normalised when `normalize`."""
        latents = self.in_proj(features)  # (..., d)
        return F.normalize(latents, dim=-1) if self.normalize else latents  # (..., d)

    def project_out(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., code_dim) -> (..., input_dim)."""
        return self.out_proj(latents)  # (..., input_dim)

    def codes(self) -> torch.Tensor:
        """The codebook as used for lookup: (K, d), l2-normalised when `normalize`."""
        return F.normalize(self.codebook, dim=-1) if self.normalize else self.codebook  # (K, d)

    @torch.no_grad()
    def lookup(self, latents: torch.Tensor) -> torch.Tensor:
        """Nearest code for each row: latents (N, d) (already projected) -> indices (N,) long."""
        codes = self.codes()  # (K, d)
        if self.normalize:  # both sides unit length: nearest = largest cosine
            return (latents @ codes.t()).argmax(dim=-1)  # (N,)
        distances = codes.pow(2).sum(-1) - 2 * latents @ codes.t()  # (N, K), up to the per-row |z|^2
        return distances.argmin(dim=-1)  # (N,)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...) long -> codes (..., d) in the lookup space (before `project_out`)."""
        return F.embedding(indices, self.codes())  # (..., d)

    def losses(self, latents: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted total, commitment, codebook) losses between latents and their codes, same shape."""
        commitment = F.mse_loss(latents, codes.detach())  # () pulls the encoder towards its codes
        if self.codebook_update == "loss":
            codebook_loss = F.mse_loss(codes, latents.detach())  # () pulls the codes towards the encoder
        else:
            codebook_loss = torch.zeros((), device=latents.device)  # () the EMA moves the codes instead
        return self.commitment_weight * commitment + codebook_loss, commitment, codebook_loss

    @torch.no_grad()
    def update(self, latents: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """One training step of codebook upkeep: EMA update, usage counters, dead-code restart.

        latents (N, d) are the vectors that were looked up (already projected, detached) and
        indices (N,) their codes. Restarted codes are drawn from `latents` with `generator`
        (None: a generator seeded by the step count, so runs stay reproducible). Returns usage
        statistics of this batch and the number of restarted codes.
        """
        latents = latents.detach().float()  # (N, d)
        counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
        if self.codebook_update == "ema":
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, latents)  # (K, d)
            self.cluster_size.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.embed_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            # Laplace smoothing keeps a code that lost all its vectors from dividing by zero.
            total = self.cluster_size.sum()  # ()
            smoothed = (self.cluster_size + 1e-5) / (total + self.codebook_size * 1e-5) * total  # (K,)
            self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))  # (K, d)
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        self.steps.add_(1)
        restarted = torch.zeros((), device=latents.device)  # ()
        if self.dead_code_steps > 0:
            dead = (self.unused_steps >= self.dead_code_steps).nonzero().squeeze(1)  # (M,)
            if dead.numel() > 0:
                self._restart(dead, latents, generator)
                restarted = torch.tensor(float(dead.numel()), device=latents.device)  # ()
        return {**usage_statistics(counts), "restarted": restarted}

    def _restart(self, dead: torch.Tensor, latents: torch.Tensor, generator: torch.Generator | None) -> None:
        """Re-initialise codes `dead` (M,) from random rows of `latents` (N, d)."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(self.steps))
        num_rows, num_dead = latents.shape[0], dead.numel()
        if num_rows >= num_dead:
            rows = torch.randperm(num_rows, generator=generator, device=generator.device)[:num_dead]  # (M,)
        else:
            rows = torch.randint(num_rows, (num_dead,), generator=generator, device=generator.device)  # (M,)
        fresh = latents[rows.to(latents.device)]  # (M, d)
        # `.data`: the codebook may already be in this step's autograd graph; dead rows got no gradient.
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        if self.codebook_update == "ema":
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    # --- single-scale quantisation ---------------------------------------------------------------
    def forward(self, features: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """features (..., input_dim) -> QuantizerOutput(quantized (..., input_dim), indices (...), ...)."""
        latents = self.project_in(features)  # (..., d)
        flat = latents.reshape(-1, self.code_dim)  # (N, d)
        indices = self.lookup(flat)  # (N,)
        codes = self.embed(indices)  # (N, d)
        loss, commitment, codebook_loss = self.losses(flat, codes)
        if self.training:
            statistics = self.update(flat, indices, generator)
        else:
            statistics = {**usage_statistics(torch.bincount(indices, minlength=self.codebook_size).float()),
                          "restarted": torch.zeros((), device=flat.device)}
        straight_through = flat + (codes - flat).detach()  # (N, d): value of codes, gradient of flat
        quantized = self.project_out(straight_through.view(latents.shape))  # (..., input_dim)
        metrics = {"commitment": commitment.detach(), "codebook_loss": codebook_loss.detach(), **statistics}
        return QuantizerOutput(quantized, indices.view(latents.shape[:-1]), loss, metrics)

    def indices_to_features(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...) long -> (..., input_dim): what `forward` gives for those codes."""
        return self.project_out(self.embed(indices))  # (..., input_dim)
