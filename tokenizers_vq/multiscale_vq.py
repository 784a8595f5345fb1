"""Multi-scale residual VQ tokenizer: an image becomes coarse-to-fine token maps 1x1, 2x2, ..., 8x8.

Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale
Prediction" (VAR), arXiv:2404.02905. The encoder's latent map is quantised scale by scale with
ONE shared codebook: at scale k the residual (latent minus the reconstruction so far) is
area-downsampled to k x k, each cell takes its nearest code, and the code map is upsampled back
to the latent grid, refined by a light per-scale convolution (VAR's phi, mixed residually) and
added to the running reconstruction. The last scale is the full latent grid.

Codes are flat, (B, sum_k h_k*w_k), in scale order (the first scale is 1x1). `teacher_inputs`
gives the transformer its inputs for scales 2..K: the running reconstruction after scales 1..k,
area-resized to scale k+1's grid. A prefix of complete scales decodes to a coarser image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizers_vq.base import Tokenizer, TokenizerLoss
from tokenizers_vq.conv import (Decoder, Encoder, check_images, level_widths, reconstruction_loss,
                                reconstruction_metrics)
from tokenizers_vq.vector_quantizer import VectorQuantizer, usage_statistics


@dataclass
class MultiscaleVQConfig:
    image_size: int = 32  # the tokenizer works at this size only (the scales are fixed)
    channels: int = 3
    base_channels: int = 16  # level widths 16, 32, 64: ~0.17 s per batch of 64 on 2 CPU cores
    channel_multipliers: tuple[int, ...] = (1, 2, 4)  # one per level: len == num_downsamples + 1
    num_res_blocks: int = 1
    num_downsamples: int = 2  # latent grid = image_size / 2**num_downsamples = 8
    scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8)  # k x k token maps; first 1, last the latent grid
    codebook_size: int = 512  # one codebook shared by every scale
    code_dim: int = 16  # C of the codes, the latent map and the teacher inputs
    normalize_codes: bool = False  # VAR looks up residuals by Euclidean distance
    codebook_update: str = "loss"  # "loss" (VAR) | "ema"
    ema_decay: float = 0.99
    commitment_weight: float = 0.25
    dead_code_steps: int = 50  # restart a code unused for this many training steps; 0 = never
    refine_ratio: float = 0.5  # phi(h) = (1 - r) h + r conv(h); 0 disables the refinement
    upsample_mode: str = "bicubic"  # code map -> latent grid: "bicubic" | "bilinear"
    reconstruction_loss: str = "mse"  # "mse" | "l1"

    def __post_init__(self) -> None:
        if len(self.channel_multipliers) != self.num_downsamples + 1:
            raise ValueError(f"channel_multipliers {self.channel_multipliers} needs num_downsamples + 1 = "
                             f"{self.num_downsamples + 1} entries (one per resolution level)")
        latent_size, remainder = divmod(self.image_size, 2**self.num_downsamples)
        if remainder:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{self.num_downsamples}")
        scales = tuple(self.scales)
        if not scales or scales[0] != 1 or scales[-1] != latent_size or list(scales) != sorted(set(scales)):
            raise ValueError(f"scales {scales} must increase strictly from 1 to the latent grid size "
                             f"{latent_size} (= image_size / 2**num_downsamples)")
        if self.upsample_mode not in ("bicubic", "bilinear"):
            raise ValueError(f"upsample_mode must be 'bicubic' or 'bilinear', got {self.upsample_mode!r}")
        if self.reconstruction_loss not in ("mse", "l1"):
            raise ValueError(f"reconstruction_loss must be 'mse' or 'l1', got {self.reconstruction_loss!r}")


class ScaleRefiner(nn.Module):
    """VAR's phi: a 3x3 convolution mixed with its input, (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.ratio) * x + self.ratio * self.conv(x)  # (B, C, H, W)


class MultiscaleVQ(Tokenizer):
    """images (B, 3, S, S) in [-1, 1] <-> codes (B, sum_k k*k) long over one shared codebook."""

    Config = MultiscaleVQConfig
    modality = "image"

    def __init__(self, config: MultiscaleVQConfig) -> None:
        super().__init__(config)
        hidden = level_widths(config.base_channels, config.channel_multipliers)[-1]
        self.encoder = Encoder(config.channels, config.base_channels, config.channel_multipliers,
                               config.num_res_blocks, hidden)
        self.quantizer = VectorQuantizer(
            hidden, config.code_dim, config.codebook_size, normalize=config.normalize_codes,
            codebook_update=config.codebook_update, ema_decay=config.ema_decay,
            commitment_weight=config.commitment_weight, dead_code_steps=config.dead_code_steps)
        self.refiners = nn.ModuleList(ScaleRefiner(config.code_dim, config.refine_ratio) for _ in config.scales)
        self.decoder = Decoder(hidden, config.base_channels, config.channel_multipliers,
                               config.num_res_blocks, config.channels)
        sizes = [height * width for height, width in self.scales]
        self.prefix_lengths = tuple(itertools.accumulate(sizes, initial=0))  # codes after 0..K scales

    # --- the contract ----------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        """C of `teacher_inputs` (the code dimension)."""
        return self.config.code_dim

    @property
    def scales(self) -> tuple[tuple[int, int], ...]:
        """(h_k, w_k) of every scale, coarsest first."""
        return tuple((side, side) for side in self.config.scales)

    @property
    def latent_size(self) -> int:
        return self.config.scales[-1]

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        expected = (self.config.channels, self.config.image_size, self.config.image_size)
        if tuple(data_shape) != expected:
            raise ValueError(f"this multi-scale tokenizer takes images of shape {expected} (its scales "
                             f"are fixed), got {tuple(data_shape)}")
        return (self.prefix_lengths[-1],)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) in [-1, 1] -> codes (B, sum_k h_k*w_k) long, coarsest scale first."""
        self._check_images(images)
        indices, _, _ = self._quantize(self._latents(images))
        return torch.cat(indices, dim=1)  # (B, L)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, L) long for all scales or a prefix of complete scales -> images (B, C, S, S) in [-1, 1].

        A prefix of m < K scales decodes the coarser latent that those scales reconstruct.
        """
        parts = self._split(codes)
        if not parts:
            raise ValueError("cannot decode 0 codes: pass at least the first (1x1) scale")
        latents = torch.zeros(codes.shape[0], self.config.code_dim, self.latent_size, self.latent_size,
                              device=codes.device)  # (B, C, h, w)
        for index, part in enumerate(parts):
            latents = latents + self._contribution(index, part)  # (B, C, h, w)
        return self._decode_latents(latents).clamp(-1, 1)  # (B, 3, S, S)

    def teacher_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """Transformer inputs for the scales after the first: codes (B, L) -> (B, N, C) float.

        With all K scales, N = sum_{k>=2} h_k*w_k: row block k-1 is the running reconstruction
        after scales 1..k-1, area-resized to scale k's grid and flattened row-major. With a prefix of
        m < K complete scales (sampling), the inputs for scales 2..m+1, so the last h_{m+1}*w_{m+1}
        rows feed the next scale. Differentiable; call under `torch.no_grad()` for a frozen tokenizer.
        """
        parts = self._split(codes)
        batch = codes.shape[0]
        latents = torch.zeros(batch, self.config.code_dim, self.latent_size, self.latent_size,
                              device=codes.device)  # (B, C, h, w)
        inputs = []
        for index, part in enumerate(parts):
            latents = latents + self._contribution(index, part)  # (B, C, h, w)
            if index + 1 < len(self.scales):
                resized = F.interpolate(latents, size=self.scales[index + 1], mode="area")  # (B, C, h_k+1, w_k+1)
                inputs.append(rearrange(resized, "b c h w -> b (h w) c"))  # (B, h_k+1 * w_k+1, C)
        if not inputs:
            return latents.new_zeros(batch, 0, self.config.code_dim)  # (B, 0, C)
        return torch.cat(inputs, dim=1)  # (B, N, C)

    def training_loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        """Reconstruction + VAR's multi-scale VQ loss. `reconstruction` is the unclamped decoder output.

        The VQ loss averages, over scales, beta * |latent - sg(running reconstruction)|^2 (commitment,
        trains the encoder) + |sg(latent) - running reconstruction|^2 (trains the codebook and phi),
        so coarse prefixes are trained to approximate the latent too.
        Metrics: loss, reconstruction, mse, psnr, commitment, refinement, usage, perplexity, restarted.
        """
        self._check_images(images)
        latents = self._latents(images)  # (B, C, h, w)
        indices, cumulative, lookups = self._quantize(latents)
        commitment = torch.stack([F.mse_loss(latents, partial.detach()) for partial in cumulative]).mean()  # ()
        refinement = torch.stack([F.mse_loss(partial, latents.detach()) for partial in cumulative]).mean()  # ()
        final = cumulative[-1]  # (B, C, h, w)
        straight_through = latents + (final - latents).detach()  # (B, C, h, w)
        reconstruction = self._decode_latents(straight_through)  # (B, 3, S, S)
        rec_loss = reconstruction_loss(self.config.reconstruction_loss, reconstruction, images)  # ()
        loss = rec_loss + self.config.commitment_weight * commitment + refinement  # ()
        flat_indices = torch.cat([part.flatten() for part in indices])  # (B * L,)
        if self.training:
            statistics = self.quantizer.update(torch.cat(lookups), flat_indices, generator)
        else:
            counts = torch.bincount(flat_indices, minlength=self.codebook_size).float()  # (K,)
            statistics = {**usage_statistics(counts), "restarted": torch.zeros((), device=images.device)}
        metrics = {"loss": loss.detach(), "reconstruction": rec_loss.detach(),
                   **reconstruction_metrics(reconstruction, images), "commitment": commitment.detach(),
                   "refinement": refinement.detach(), **statistics}
        values = torch.stack([value.float() for value in metrics.values()]).tolist()  # one host sync
        return TokenizerLoss(loss, reconstruction, dict(zip(metrics, values)))

    # --- internals ---------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        check_images(images, self.config.channels, 2**self.config.num_downsamples)
        if images.shape[2] != self.config.image_size or images.shape[3] != self.config.image_size:
            raise ValueError(f"this multi-scale tokenizer takes {self.config.image_size}x{self.config.image_size} "
                             f"images (its scales are fixed), got {tuple(images.shape[2:])}")

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> latent map (B, C, h, w) in the code space."""
        features = rearrange(self.encoder(images), "b c h w -> b h w c")  # (B, h, w, hidden)
        return rearrange(self.quantizer.project_in(features), "b h w c -> b c h w")  # (B, C, h, w)

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latent map (B, C, h, w) -> unclamped images (B, 3, S, S)."""
        features = self.quantizer.project_out(rearrange(latents, "b c h w -> b h w c"))  # (B, h, w, hidden)
        return self.decoder(rearrange(features, "b h w c -> b c h w"))  # (B, 3, S, S)

    def _contribution(self, index: int, codes: torch.Tensor) -> torch.Tensor:
        """Scale `index`'s codes (B, h_k*w_k) -> its refined, upsampled code map (B, C, h, w)."""
        height, width = self.scales[index]
        code_map = rearrange(self.quantizer.embed(codes), "b (h w) c -> b c h w", h=height, w=width)  # (B, C, h_k, w_k)
        if (height, width) != (self.latent_size, self.latent_size):
            code_map = F.interpolate(code_map, size=(self.latent_size, self.latent_size),
                                     mode=self.config.upsample_mode, align_corners=False)  # (B, C, h, w)
        return self.refiners[index](code_map)  # (B, C, h, w)

    def _quantize(self, latents: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Residual quantisation of latents (B, C, h, w), coarsest scale first.

        Returns per scale: indices (B, h_k*w_k), the running reconstruction after it (B, C, h, w),
        and the residual vectors that were looked up (B*h_k*w_k, C).
        """
        residual = latents.detach()  # (B, C, h, w): the lookup is not differentiated
        running = torch.zeros_like(residual)  # (B, C, h, w)
        indices, cumulative, lookups = [], [], []
        for index, (height, width) in enumerate(self.scales):
            small = F.interpolate(residual, size=(height, width), mode="area")  # (B, C, h_k, w_k)
            vectors = rearrange(small, "b c h w -> (b h w) c")  # (B*h_k*w_k, C)
            codes = self.quantizer.lookup(vectors).view(latents.shape[0], height * width)  # (B, h_k*w_k)
            contribution = self._contribution(index, codes)  # (B, C, h, w)
            running = running + contribution  # (B, C, h, w)
            residual = residual - contribution.detach()  # (B, C, h, w)
            indices.append(codes)
            cumulative.append(running)
            lookups.append(vectors)
        return indices, cumulative, lookups

    def _split(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """codes (B, L) -> one (B, h_k*w_k) tensor per complete scale; ValueError unless L is a prefix."""
        if codes.dim() != 2 or codes.dtype != torch.long:
            raise ValueError(f"expected flat multi-scale codes (B, L) long, got {tuple(codes.shape)} {codes.dtype}")
        length = codes.shape[1]
        if length not in self.prefix_lengths:
            raise ValueError(f"{length} codes are not a whole number of scales: the scales {self.config.scales} "
                             f"allow prefixes of {list(self.prefix_lengths[1:])} codes (or 0)")
        # The range check reads values back to the host: left out inside a compiled decode step,
        # whose codes come from the head's own draw.
        if codes.numel() and not torch.compiler.is_compiling() and (
                int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        count = self.prefix_lengths.index(length)
        sizes = [height * width for height, width in self.scales[:count]]
        return list(codes.split(sizes, dim=1)) if count else []
