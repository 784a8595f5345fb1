"""Discrete image tokenizer: conv encoder -> vector quantiser (VQ or FSQ) -> conv decoder.

VQGAN without the GAN (Esser et al. 2021, arXiv:2012.09841) with LlamaGen's quantiser choices
(Sun et al. 2024, arXiv:2406.06525: l2-normalised 8-dimensional codes, cosine lookup), or Finite
Scalar Quantization (Mentzer et al. 2023, arXiv:2309.15505). No perceptual or adversarial loss:
no pretrained network is available offline, and a plain L1/MSE loss is enough for the
procedural datasets. A 32x32 image becomes an 8x8 grid of codes by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from tokenizers_vq.base import Tokenizer, TokenizerLoss
from tokenizers_vq.conv import (Decoder, Encoder, check_images, level_widths, reconstruction_loss,
                                reconstruction_metrics)
from tokenizers_vq.fsq import FiniteScalarQuantizer
from tokenizers_vq.vector_quantizer import VectorQuantizer


@dataclass
class ImageVQConfig:
    image_size: int = 32  # side of the training images (encode accepts any multiple of the factor)
    channels: int = 3
    base_channels: int = 16  # level widths 16, 32, 64: ~0.17 s per batch of 64 on 2 CPU cores
    channel_multipliers: tuple[int, ...] = (1, 2, 4)  # one per level: len == num_downsamples + 1
    num_res_blocks: int = 1  # per level, in encoder and decoder
    num_downsamples: int = 2  # tokens are 2**num_downsamples pixels apart: 32x32 -> 8x8
    quantizer: str = "vq"  # "vq" (learned codebook) | "fsq" (finite scalar quantization)
    codebook_size: int = 512  # vq: number of codes
    code_dim: int = 8  # vq: dimension of the (l2-normalised) codes
    normalize_codes: bool = True  # vq: cosine lookup (ViT-VQGAN / LlamaGen) rather than Euclidean
    codebook_update: str = "ema"  # vq: "ema" (moving-average k-means) | "loss" (codebook loss)
    ema_decay: float = 0.99  # vq, ema
    commitment_weight: float = 0.25  # vq
    dead_code_steps: int = 50  # vq: restart a code unused for this many training steps; 0 = never
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # fsq: levels per channel (codebook = their product)
    reconstruction_loss: str = "mse"  # "mse" | "l1"

    def __post_init__(self) -> None:
        if len(self.channel_multipliers) != self.num_downsamples + 1:
            raise ValueError(f"channel_multipliers {self.channel_multipliers} needs num_downsamples + 1 = "
                             f"{self.num_downsamples + 1} entries (one per resolution level)")
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.reconstruction_loss not in ("mse", "l1"):
            raise ValueError(f"reconstruction_loss must be 'mse' or 'l1', got {self.reconstruction_loss!r}")
        if self.image_size % 2**self.num_downsamples:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{self.num_downsamples}")


class ImageVQ(Tokenizer):
    """images (B, 3, H, W) in [-1, 1] <-> codes (B, H/f, W/f) long, f = 2**num_downsamples."""

    Config = ImageVQConfig
    modality = "image"

    def __init__(self, config: ImageVQConfig) -> None:
        super().__init__(config)
        hidden = level_widths(config.base_channels, config.channel_multipliers)[-1]
        self.encoder = Encoder(config.channels, config.base_channels, config.channel_multipliers,
                               config.num_res_blocks, hidden)
        if config.quantizer == "vq":
            self.quantizer = VectorQuantizer(
                hidden, config.code_dim, config.codebook_size, normalize=config.normalize_codes,
                codebook_update=config.codebook_update, ema_decay=config.ema_decay,
                commitment_weight=config.commitment_weight, dead_code_steps=config.dead_code_steps)
        else:
            self.quantizer = FiniteScalarQuantizer(hidden, config.fsq_levels)
        self.decoder = Decoder(hidden, config.base_channels, config.channel_multipliers,
                               config.num_res_blocks, config.channels)

    # --- the contract ----------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def downsampling_factor(self) -> int:
        return 2**self.config.num_downsamples

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = data_shape
        factor = self.downsampling_factor
        if channels != self.config.channels or height % factor or width % factor:
            raise ValueError(f"cannot tokenize images of shape {tuple(data_shape)}: need "
                             f"({self.config.channels}, H, W) with H and W divisible by {factor}")
        return height // factor, width // factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> codes (B, H/f, W/f) long."""
        check_images(images, self.config.channels, self.downsampling_factor)
        features = rearrange(self.encoder(images), "b c h w -> b h w c")  # (B, h, w, hidden)
        if isinstance(self.quantizer, VectorQuantizer):  # lookup only: no training-time upkeep
            latents = self.quantizer.project_in(features)  # (B, h, w, d)
            return self.quantizer.lookup(latents.flatten(0, 2)).view(latents.shape[:3])  # (B, h, w)
        return self.quantizer(features).indices  # (B, h, w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) long -> images (B, C, h*f, w*f) clamped to [-1, 1]."""
        if codes.dim() != 3 or codes.dtype != torch.long:
            raise ValueError(f"expected codes (B, h, w) long, got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        features = self.quantizer.indices_to_features(codes)  # (B, h, w, hidden)
        images = self.decoder(rearrange(features, "b h w c -> b c h w"))  # (B, C, H, W)
        return images.clamp(-1, 1)  # (B, C, H, W)

    def training_loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        """Reconstruction + quantiser loss. `reconstruction` is the unclamped decoder output (B, C, H, W).

        Metrics: loss, reconstruction, mse and psnr (of the clamped reconstruction, images in
        [-1, 1] so PSNR = 10 log10(4 / mse)), usage (fraction of codes used in this batch),
        perplexity; for VQ also commitment, codebook_loss and restarted (codes re-initialised).
        """
        check_images(images, self.config.channels, self.downsampling_factor)
        features = rearrange(self.encoder(images), "b c h w -> b h w c")  # (B, h, w, hidden)
        quantized = self.quantizer(features, generator)
        reconstruction = self.decoder(rearrange(quantized.quantized, "b h w c -> b c h w"))  # (B, C, H, W)
        rec_loss = reconstruction_loss(self.config.reconstruction_loss, reconstruction, images)  # ()
        loss = rec_loss + quantized.loss  # ()
        metrics = {"loss": loss.detach(), "reconstruction": rec_loss.detach(),
                   **reconstruction_metrics(reconstruction, images), **quantized.metrics}
        values = torch.stack([value.float() for value in metrics.values()]).tolist()  # one host sync
        return TokenizerLoss(loss, reconstruction, dict(zip(metrics, values)))
