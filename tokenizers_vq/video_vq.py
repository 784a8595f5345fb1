"""Causal video tokenizer: causal 3-D conv encoder -> FSQ / VQ codes or KL latents -> causal 3-D decoder.

Clips are (F, 3, H, W) float in [-1, 1] (frames first, as `mmar.media` writes them); a batch is
(B, F, 3, H, W). The token grid is (1 + (F - 1) / 4, H / f, W / f) with the defaults: the first
frame is encoded on its own (so an image is a one-frame clip, and the same tokenizer encodes
both), later frames are compressed x4 in time. Every convolution is causal in time, so the codes
of frames before k never depend on frame k (tested).

The bottleneck is chosen in the config:

- "fsq" (default) / "vq": discrete codes (B, t, h, w) long for the `next_token` head; Finite Scalar
  Quantization (Mentzer et al. 2023, arXiv:2309.15505) or the learned codebook of
  `tokenizers_vq.vector_quantizer` (VQ-VAE, arXiv:1711.00937), as MAGVIT-v2's LFQ / Emu3 do;
- "kl": continuous latents (B, t, h, w, C) float for the `flow_matching` head: the posterior mean
  times a scaling factor fitted by `calibrate` (1 / std of the means, LDM, arXiv:2112.10752), as in
  `tokenizers_vq.image_kl`.

Network: `tokenizers_vq.causal_conv` (MAGVIT-v2, arXiv:2310.05737; CogVideoX, arXiv:2408.06072).
No perceptual or adversarial loss (no pretrained network offline; the procedural clips do not
need one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from einops import rearrange

from tokenizers_vq.base import Tokenizer, TokenizerLoss
from tokenizers_vq.causal_conv import CausalDecoder, CausalEncoder
from tokenizers_vq.conv import level_widths, reconstruction_loss, reconstruction_metrics
from tokenizers_vq.fsq import FiniteScalarQuantizer
from tokenizers_vq.vector_quantizer import VectorQuantizer

BOTTLENECKS = ("fsq", "vq", "kl")


@dataclass
class VideoVQConfig:
    channels: int = 3
    base_channels: int = 16  # level widths 16, 32, 64
    channel_multipliers: tuple[int, ...] = (1, 2, 4)  # one per level: len == num_downsamples + 1
    num_res_blocks: int = 1  # per level, in encoder and decoder
    num_downsamples: int = 2  # tokens are 2**num_downsamples pixels apart: 32x32 -> 8x8
    num_temporal_downsamples: int = 2  # later frames compressed 2**n in time: 9 frames -> 3 token frames
    temporal_kernel: int = 3  # frames each causal convolution sees (itself and kernel - 1 before it)
    # True: per-frame 2-D convolutions at the spatial levels, time folded into channels and mixed at
    # the token resolution only (learns the motion far faster); False: 3-D convolutions everywhere
    time_at_latent: bool = True
    bottleneck: str = "fsq"  # "fsq" | "vq" (codes, next_token) | "kl" (continuous latents, flow_matching)
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # fsq: levels per channel (codebook = their product)
    codebook_size: int = 512  # vq: number of codes
    code_dim: int = 8  # vq: dimension of the (l2-normalised) codes
    commitment_weight: float = 0.25  # vq
    dead_code_steps: int = 50  # vq: restart a code unused this many steps; 0 = never
    latent_channels: int = 8  # kl: C of each continuous token
    kl_weight: float = 1e-6  # kl: times the KL summed over a clip's latents (as image_kl)
    scaling_factor: float = 1.0  # kl: tokens = posterior mean * scaling_factor; set by `calibrate`
    reconstruction_loss: str = "mse"  # "mse" | "l1"

    def __post_init__(self) -> None:
        if len(self.channel_multipliers) != self.num_downsamples + 1:
            raise ValueError(f"channel_multipliers {self.channel_multipliers} needs num_downsamples + 1 = "
                             f"{self.num_downsamples + 1} entries (one per resolution level)")
        if self.bottleneck not in BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck!r}")
        if self.reconstruction_loss not in ("mse", "l1"):
            raise ValueError(f"reconstruction_loss must be 'mse' or 'l1', got {self.reconstruction_loss!r}")
        if self.temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be at least 1, got {self.temporal_kernel}")


class VideoVQ(Tokenizer):
    """clips (B, F, 3, H, W) in [-1, 1] <-> codes (B, t, h, w) long or latents (B, t, h, w, C) float."""

    Config = VideoVQConfig
    modality = "video"

    def __init__(self, config: VideoVQConfig) -> None:
        super().__init__(config)
        hidden = level_widths(config.base_channels, config.channel_multipliers)[-1]
        encoder_out = 2 * config.latent_channels if config.bottleneck == "kl" else hidden  # kl: mean, log-variance
        decoder_in = config.latent_channels if config.bottleneck == "kl" else hidden
        wiring = (config.base_channels, config.channel_multipliers, config.num_res_blocks)
        timing = (config.num_temporal_downsamples, config.temporal_kernel, config.time_at_latent)
        self.encoder = CausalEncoder(config.channels, *wiring, encoder_out, *timing)
        self.decoder = CausalDecoder(decoder_in, *wiring, config.channels, *timing)
        if config.bottleneck == "vq":
            self.quantizer = VectorQuantizer(hidden, config.code_dim, config.codebook_size,
                                             commitment_weight=config.commitment_weight,
                                             dead_code_steps=config.dead_code_steps)
        elif config.bottleneck == "fsq":
            self.quantizer = FiniteScalarQuantizer(hidden, config.fsq_levels)
        else:
            self.quantizer = None

    # --- the contract ----------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return 0 if self.quantizer is None else self.quantizer.codebook_size

    @property
    def num_codebooks(self) -> int:
        return 0 if self.quantizer is None else 1

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels if self.quantizer is None else 0

    @property
    def spatial_factor(self) -> int:
        return 2**self.config.num_downsamples

    @property
    def temporal_factor(self) -> int:
        return 2**self.config.num_temporal_downsamples

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(F, 3, H, W) -> (1 + (F - 1) / temporal_factor, H / f, W / f); F = 1 is an image."""
        if len(data_shape) != 4:
            raise ValueError(f"cannot tokenize clips of shape {tuple(data_shape)}: need (F, 3, H, W)")
        frames, channels, height, width = data_shape
        f, ft = self.spatial_factor, self.temporal_factor
        if channels != self.config.channels or height % f or width % f or frames < 1 or (frames - 1) % ft:
            raise ValueError(f"cannot tokenize clips of shape {tuple(data_shape)}: need (F, {self.config.channels}, "
                             f"H, W) with H and W divisible by {f} and F = 1 + {ft} k frames (1, {1 + ft}, "
                             f"{1 + 2 * ft}, ...)")
        return 1 + (frames - 1) // ft, height // f, width // f

    def _features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, F, 3, H, W) -> encoder output channel-last (B, t, h, w, C_enc), shape-checked."""
        if not isinstance(clips, torch.Tensor) or clips.dim() != 5 or not clips.is_floating_point():
            shape = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
            raise ValueError(f"expected float clips (B, F, {self.config.channels}, H, W) in [-1, 1], got {shape}")
        self.token_shape(tuple(clips.shape[1:]))
        features = self.encoder(rearrange(clips, "b f c h w -> b c f h w"))  # (B, C_enc, t, h, w)
        return rearrange(features, "b c t h w -> b t h w c")  # (B, t, h, w, C_enc)

    def _decode_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w, C) -> clips (B, F, 3, H, W), unclamped."""
        clips = self.decoder(rearrange(features, "b t h w c -> b c t h w"))  # (B, 3, F, H, W)
        return rearrange(clips, "b c f h w -> b f c h w")  # (B, F, 3, H, W)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, F, 3, H, W) in [-1, 1] -> codes (B, t, h, w) long, or latents (B, t, h, w, C) for "kl"."""
        features = self._features(clips)  # (B, t, h, w, C_enc)
        if self.quantizer is None:
            mean = features[..., : self.config.latent_channels]  # (B, t, h, w, C)
            return mean * self.config.scaling_factor  # (B, t, h, w, C)
        if isinstance(self.quantizer, VectorQuantizer):  # lookup only: no training-time upkeep
            latents = self.quantizer.project_in(features)  # (B, t, h, w, d)
            return self.quantizer.lookup(latents.flatten(0, 3)).view(latents.shape[:4])  # (B, t, h, w)
        return self.quantizer(features).indices  # (B, t, h, w)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """codes (B, t, h, w) long or latents (B, t, h, w, C) -> clips (B, 1 + (t-1)*4, 3, H, W) in [-1, 1]."""
        if self.quantizer is None:
            if tokens.dim() != 5 or tokens.shape[-1] != self.config.latent_channels or not tokens.is_floating_point():
                raise ValueError(f"expected latents (B, t, h, w, {self.config.latent_channels}) float, "
                                 f"got {tuple(tokens.shape)} {tokens.dtype}")
            features = tokens.to(next(self.parameters()).dtype) / self.config.scaling_factor  # (B, t, h, w, C)
        else:
            if tokens.dim() != 4 or tokens.dtype != torch.long:
                raise ValueError(f"expected codes (B, t, h, w) long, got {tuple(tokens.shape)} {tokens.dtype}")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
                raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                                 f"[{int(tokens.min())}, {int(tokens.max())}]")
            features = self.quantizer.indices_to_features(tokens)  # (B, t, h, w, hidden)
        return self._decode_features(features).clamp(-1, 1)  # (B, F, 3, H, W)

    def training_loss(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        """Reconstruction + quantiser loss (fsq/vq) or + kl_weight * KL (kl). `reconstruction` is unclamped.

        Metrics: loss, reconstruction, mse and psnr of the clamped output (PSNR = 10 log10(4 / mse)),
        psnr_first (frame 0) and psnr_later (frames 1..); fsq/vq add usage and perplexity, kl adds kl.
        """
        features = self._features(clips)  # (B, t, h, w, C_enc)
        if self.quantizer is None:
            mean, logvar = features.float().chunk(2, dim=-1)  # (B, t, h, w, C) each
            logvar = logvar.clamp(-30.0, 20.0)
            noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                                dtype=mean.dtype)  # (B, t, h, w, C)
            reconstruction = self._decode_features(mean + torch.exp(0.5 * logvar) * noise)  # (B, F, 3, H, W)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, t, h, w, C)
            auxiliary = self.config.kl_weight * kl.flatten(1).sum(1).mean()  # () per clip, as in LDM
            extra = {"kl": kl.detach().flatten(1).sum(1).mean()}
        else:
            quantized = self.quantizer(features, generator)
            reconstruction = self._decode_features(quantized.quantized)  # (B, F, 3, H, W)
            auxiliary, extra = quantized.loss, dict(quantized.metrics)
        rec_loss = reconstruction_loss(self.config.reconstruction_loss, reconstruction.float(), clips.float())  # ()
        loss = rec_loss + auxiliary  # ()
        metrics = {"loss": loss.detach(), "reconstruction": rec_loss.detach(),
                   **reconstruction_metrics(reconstruction.float(), clips.float()),
                   "psnr_first": reconstruction_metrics(reconstruction[:, :1].float(), clips[:, :1].float())["psnr"],
                   **extra}
        if clips.shape[1] > 1:
            metrics["psnr_later"] = reconstruction_metrics(reconstruction[:, 1:].float(), clips[:, 1:].float())["psnr"]
        values = torch.stack([value.float() for value in metrics.values()]).tolist()  # one host sync
        return TokenizerLoss(loss, reconstruction, dict(zip(metrics, values)))

    @torch.no_grad()
    def calibrate(self, clips: torch.Tensor, batch_size: int = 64) -> None:
        """"kl": set `config.scaling_factor` = 1 / std of the posterior means over clips (B, F, 3, H, W)."""
        if self.quantizer is not None:
            return
        means = [self._features(chunk)[..., : self.config.latent_channels].float()
                 for chunk in clips.split(batch_size)]  # (b, t, h, w, C) each
        std = torch.cat(means).std()  # ()
        if not torch.isfinite(std) or std <= 0:
            raise ValueError(f"cannot calibrate: posterior means have std {float(std)}")
        self.config = dataclasses.replace(self.config, scaling_factor=float(1.0 / std))
