"""Continuous image tokenizer: a small KL autoencoder (LDM's "KL-f4/f8" VAE) trained from scratch.

The network is diffusers' `AutoencoderKL` built from a tiny config (no pretrained weights).
Tokens are the posterior MEAN times a scaling factor, channel-last, one C-vector per latent cell:
the continuous tokens that the flow-matching head models (MAR, Li et al. 2024, arXiv:2406.11838;
NextStep-1, arXiv:2508.10711).

- KL autoencoder and the latent scaling factor (1 / std of the posterior means, fitted after
  training): Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
  arXiv:2112.10752; VAE: Kingma & Welling 2013, arXiv:1312.6114.
- The loss is reconstruction + kl_weight * KL (no perceptual or adversarial term: no pretrained
  feature network can be downloaded here, and 32x32 procedural shapes do not need one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from tokenizers_vq.base import Tokenizer, TokenizerLoss


@dataclass
class ImageKLConfig:
    image_size: int = 32  # H = W of the training images
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # one level each; len - 1 downsamples (x2 each)
    layers_per_block: int = 1  # resnets per encoder level (the decoder has one more)
    latent_channels: int = 8  # C of each continuous token
    norm_num_groups: int = 16  # GroupNorm groups; must divide every entry of block_out_channels
    mid_block_attention: bool = False  # self-attention in the bottleneck (costly, no gain on 8x8 shapes)
    reconstruction_loss: str = "mse"  # "mse" | "l1", mean over pixels (L1 learns much slower on mostly black shapes)
    # Times the KL summed over each image's latent elements, averaged over the batch (as in LDM); the
    # reconstruction is a per-pixel mean, so 1e-6 keeps the posterior std at ~0.3-0.4 of the means' std.
    kl_weight: float = 1e-6
    scaling_factor: float = 1.0  # tokens = posterior mean * scaling_factor; set by `calibrate`


class ImageKL(Tokenizer):
    """images (B, 3, H, W) in [-1, 1] <-> latents (B, H/f, W/f, C) float, f = 2 ** (levels - 1)."""

    Config = ImageKLConfig
    modality = "image"

    def __init__(self, config: ImageKLConfig) -> None:
        super().__init__(config)
        if config.reconstruction_loss not in ("l1", "mse"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'mse', got {config.reconstruction_loss!r}")
        if config.layers_per_block < 1 or not config.block_out_channels:
            raise ValueError(f"need layers_per_block >= 1 and at least one level, got {config}")
        if any(channels % config.norm_num_groups for channels in config.block_out_channels):
            raise ValueError(
                f"norm_num_groups={config.norm_num_groups} must divide every block_out_channels "
                f"{config.block_out_channels}"
            )
        # diffusers is imported here, not at module level: `import tokenizers_vq` (the registry) must
        # work where diffusers is absent (the GPU machine's stack), as long as no ImageKL is built.
        from diffusers import AutoencoderKL

        levels = len(config.block_out_channels)
        if config.image_size % self.downsample_factor:
            raise ValueError(f"image_size {config.image_size} is not divisible by {self.downsample_factor}")
        self.autoencoder = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            sample_size=config.image_size,
            scaling_factor=1.0,  # unused: our own config.scaling_factor is the one that is saved
            mid_block_add_attention=config.mid_block_attention,
        )

    # --- the contract -----------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return 0

    @property
    def num_codebooks(self) -> int:
        return 0

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = data_shape
        factor = self.downsample_factor
        if channels != 3 or height % factor or width % factor:
            raise ValueError(
                f"{type(self).__name__} takes (3, H, W) images with H, W divisible by {factor}, got {data_shape}"
            )
        return (height // factor, width // factor)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> unscaled posterior mean, log-variance (B, C, h, w) each."""
        distribution = self.autoencoder.encode(images).latent_dist
        return distribution.mean, distribution.logvar  # (B, C, h, w) each

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> latents (B, h, w, C) float: posterior mean * scaling_factor."""
        self.token_shape(tuple(images.shape[1:]))
        mean, _ = self.posterior(images)  # (B, C, h, w)
        return rearrange(mean * self.config.scaling_factor, "b c h w -> b h w c")  # (B, h, w, C)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, h, w, C) -> images (B, 3, H, W) clamped to [-1, 1]."""
        if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(f"expected latents (B, h, w, {self.config.latent_channels}), got {tuple(latents.shape)}")
        z = rearrange(latents, "b h w c -> b c h w") / self.config.scaling_factor  # (B, C, h, w)
        z = z.to(next(self.parameters()).dtype)
        return self.autoencoder.decode(z).sample.clamp(-1, 1)  # (B, 3, H, W)

    def training_loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        """images (B, 3, H, W) in [-1, 1] -> reconstruction + kl_weight * KL.

        The posterior sample's noise comes from `generator` (resume-exact training). Metrics: the
        reconstruction term, the KL per image, and PSNR (peak-to-peak 2) of the clamped output.
        """
        mean, logvar = self.posterior(images)  # (B, C, h, w) each
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)  # (B, C, h, w)
        z = mean + torch.exp(0.5 * logvar) * noise  # (B, C, h, w)
        output = self.autoencoder.decode(z).sample  # (B, 3, H, W)
        if self.config.reconstruction_loss == "l1":
            reconstruction = F.l1_loss(output.float(), images.float())
        else:
            reconstruction = F.mse_loss(output.float(), images.float())
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())  # (B, C, h, w)
        kl = kl.flatten(1).sum(dim=1).mean()  # () per image, as in LDM
        loss = reconstruction + self.config.kl_weight * kl
        clamped = output.detach().float().clamp(-1, 1)  # (B, 3, H, W)
        mse = F.mse_loss(clamped, images.float()).clamp_min(1e-12)
        metrics = {
            "reconstruction": float(reconstruction.detach()),
            "kl": float(kl.detach()),
            "psnr": float(10 * torch.log10(4.0 / mse)),
        }
        return TokenizerLoss(loss, clamped, metrics)

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set `config.scaling_factor` = 1 / std of the posterior means over `images` (B, 3, H, W) (LDM)."""
        means = [self.posterior(chunk)[0].float() for chunk in images.split(batch_size)]  # (b, C, h, w) each
        std = torch.cat(means).std()  # ()
        if not torch.isfinite(std) or std <= 0:
            raise ValueError(f"cannot calibrate: posterior means have std {float(std)}")
        self.config = dataclasses.replace(self.config, scaling_factor=float(1.0 / std))
