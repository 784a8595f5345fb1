"""Neural audio codec: strided 1-D conv encoder -> residual VQ (Q levels) -> transposed-conv decoder.

16 kHz mono; strides (4, 4, 4, 5) make one frame of Q codes every 320 samples (50 frames per
second), 4 levels of 256 codes by default (1.6 kbit/s). The shape follows SoundStream / EnCodec
(Zeghidour et al. 2021, arXiv:2107.03312; Défossez et al. 2022, arXiv:2210.13438): residual units
of dilated convolutions between strided convolutions whose kernel is twice the stride, with DAC's
periodic Snake activation (Kumar et al. 2023, arXiv:2306.06546); no
adversarial loss (no discriminator trains in minutes on a CPU), but waveform L1 + multi-resolution
STFT + multi-scale mel distances (tokenizers_vq/audio_losses.py) + the RVQ commitment loss.
Quantizer dropout (SoundStream) trains the first q levels to decode on their own, so decoding with
1, 2, ..., Q levels trades bitrate for quality.

Tokens follow the Tokenizer contract with a level axis: `token_shape((1, S)) = (S / 320, 1, 1)` (a
(t, h, w) grid along time), and `encode` gives codes (B, T, 1, 1, Q); `num_codebooks = Q`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizers_vq.audio_losses import mel_distance, multi_resolution_stft_loss, multi_scale_mel_loss, si_snr
from tokenizers_vq.base import Tokenizer, TokenizerLoss
from tokenizers_vq.residual_vq import ResidualVQ


@dataclass
class AudioCodecConfig:
    sample_rate: int = 16000  # Hz; audio is mono
    strides: tuple[int, ...] = (4, 4, 4, 5)  # product = samples per frame (320: 50 frames/s at 16 kHz)
    base_channels: int = 8  # doubled after each stride, capped at max_channels (8..64: ~0.5 M parameters)
    max_channels: int = 64
    dilations: tuple[int, ...] = (1, 3)  # residual units per resolution, one per dilation
    latent_dim: int = 32  # D of the vector each frame is quantised from
    num_codebooks: int = 4  # residual VQ levels Q
    codebook_size: int = 256  # codes per level
    # The codebooks must keep up with an encoder trained at lr 2e-3: at decay 0.99 and 20-step restarts
    # every level collapsed to ~1 code the encoder had moved away from, and the decoder saw a constant.
    ema_decay: float = 0.9
    commitment_weight: float = 0.25
    dead_code_steps: int = 5  # restart a code unused for this many steps; 0 = never
    quantizer_dropout: float = 0.5  # share of training items that use only their first 1..Q-1 levels
    activation: str = "snake"  # "snake" (periodic, DAC) | "elu" (SoundStream / EnCodec)
    # The waveform L1 is the only phase-aware term (SI-SNR needs the phase); the spectral terms, when
    # they dominate, teach a young decoder silence before pitch (see audio_losses.STFT_FLOOR).
    waveform_weight: float = 1.0  # L1 on samples
    stft_weight: float = 0.1  # multi-resolution STFT loss
    mel_weight: float = 0.1  # multi-scale log-mel L1

    def __post_init__(self) -> None:
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"strides must be positive integers, got {self.strides}")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ValueError(f"need num_codebooks >= 1 and codebook_size >= 2, got {self.num_codebooks}, "
                             f"{self.codebook_size}")
        if self.activation not in ("snake", "elu"):
            raise ValueError(f"activation must be 'snake' or 'elu', got {self.activation!r}")
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate {self.sample_rate} Hz is too low for the spectral losses")


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha per channel (Ziyin et al. 2020, arXiv:2006.08195; DAC, arXiv:2306.06546):
    a periodic bias that lets a small decoder make tones in hundreds of steps instead of thousands."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))  # (1, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sin(self.alpha * x).pow(2) / (self.alpha + 1e-9)  # (B, C, S)


def activation(name: str, channels: int) -> nn.Module:
    if name == "snake":
        return Snake(channels)
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"activation must be 'snake' or 'elu', got {name!r}")


class ResidualUnit(nn.Module):
    """act -> dilated conv k=3 -> act -> conv k=1, plus the input: (B, C, S) -> (B, C, S)."""

    def __init__(self, channels: int, dilation: int, kind: str = "snake") -> None:
        super().__init__()
        self.first, self.second = activation(kind, channels), activation(kind, channels)
        self.dilated = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.pointwise = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.second(self.dilated(self.first(x))))  # (B, C, S)


def _widths(config: AudioCodecConfig) -> list[int]:
    """Channels before each stride and after the last: len(strides) + 1 widths, finest first."""
    return [min(config.base_channels * 2**i, config.max_channels) for i in range(len(config.strides) + 1)]


class AudioEncoder(nn.Module):
    """audio (B, 1, S) -> latents (B, latent_dim, S / prod(strides)).

    Residual units run after the first stride only: at the full sample rate a convolution costs
    the most and sees the least (one input channel), so the first stride works straight on samples."""

    def __init__(self, config: AudioCodecConfig) -> None:
        super().__init__()
        widths = _widths(config)
        layers: list[nn.Module] = [nn.Conv1d(1, widths[0], 7, padding=3)]
        for level, (stride, width, wider) in enumerate(zip(config.strides, widths, widths[1:])):
            if level > 0:
                layers += [ResidualUnit(width, d, config.activation) for d in config.dilations]
            # kernel 2s, padding ceil(s/2): exactly S / s outputs for any S divisible by s
            layers += [activation(config.activation, width),
                       nn.Conv1d(width, wider, 2 * stride, stride=stride, padding=math.ceil(stride / 2))]
        layers += [ResidualUnit(widths[-1], d, config.activation) for d in config.dilations]
        layers += [activation(config.activation, widths[-1]), nn.Conv1d(widths[-1], config.latent_dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.layers(audio)  # (B, latent_dim, T)


class AudioDecoder(nn.Module):
    """latents (B, latent_dim, T) -> audio (B, 1, T * prod(strides)) (unclamped); the encoder mirrored."""

    def __init__(self, config: AudioCodecConfig) -> None:
        super().__init__()
        widths = _widths(config)[::-1]
        layers: list[nn.Module] = [nn.Conv1d(config.latent_dim, widths[0], 7, padding=3)]
        layers += [ResidualUnit(widths[0], d, config.activation) for d in config.dilations]
        last = len(config.strides) - 1
        for level, (stride, width, narrower) in enumerate(zip(config.strides[::-1], widths, widths[1:])):
            padding = math.ceil(stride / 2)
            layers += [activation(config.activation, width),
                       nn.ConvTranspose1d(width, narrower, 2 * stride, stride=stride, padding=padding,
                                          output_padding=2 * padding - stride)]  # exactly T * s outputs
            if level < last:
                layers += [ResidualUnit(narrower, d, config.activation) for d in config.dilations]
        layers += [activation(config.activation, widths[-1]), nn.Conv1d(widths[-1], 1, 7, padding=3)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.layers(latents)  # (B, 1, S)


class AudioCodec(Tokenizer):
    """audio (B, 1, S) in [-1, 1] <-> codes (B, S / hop, 1, 1, Q) long; hop = prod(strides)."""

    Config = AudioCodecConfig
    modality = "audio"

    def __init__(self, config: AudioCodecConfig) -> None:
        super().__init__(config)
        self.encoder = AudioEncoder(config)
        self.quantizer = ResidualVQ(config.latent_dim, config.codebook_size, config.num_codebooks,
                                    ema_decay=config.ema_decay, commitment_weight=config.commitment_weight,
                                    dead_code_steps=config.dead_code_steps, quantizer_dropout=config.quantizer_dropout)
        self.decoder = AudioDecoder(config)

    # --- the contract ----------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def hop_length(self) -> int:
        """Samples per frame of codes."""
        return math.prod(self.config.strides)

    @property
    def frame_rate(self) -> float:
        """Frames of codes per second."""
        return self.config.sample_rate / self.hop_length

    def bitrate(self, num_levels: int | None = None) -> float:
        """Bits per second of the codes with the first `num_levels` levels (default all)."""
        levels = self.num_codebooks if num_levels is None else num_levels
        return self.frame_rate * levels * math.log2(self.codebook_size)

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(data_shape) != 2 or data_shape[0] != 1 or data_shape[1] < self.hop_length or data_shape[1] % self.hop_length:
            raise ValueError(f"cannot tokenize audio of shape {tuple(data_shape)}: need (1, S) mono with S a positive "
                             f"multiple of {self.hop_length} samples ({self.hop_length / self.config.sample_rate * 1000:g} "
                             f"ms at {self.config.sample_rate} Hz)")
        return data_shape[1] // self.hop_length, 1, 1

    def _check_audio(self, audio: torch.Tensor) -> None:
        if audio.dim() != 3 or not audio.is_floating_point():
            raise ValueError(f"expected audio (B, 1, S) float in [-1, 1], got {tuple(audio.shape)} {audio.dtype}")
        self.token_shape(tuple(audio.shape[1:]))

    def encode(self, audio: torch.Tensor, num_levels: int | None = None) -> torch.Tensor:
        """audio (B, 1, S) -> codes (B, S / hop, 1, 1, Q) long (the first `num_levels` levels if given)."""
        self._check_audio(audio)
        latents = rearrange(self.encoder(audio), "b d t -> b t d")  # (B, T, D)
        codes = self.quantizer.encode(latents, num_levels)  # (B, T, Q)
        return codes[:, :, None, None, :]  # (B, T, 1, 1, Q)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T, 1, 1, Q') long with Q' <= Q (the first levels) -> audio (B, 1, T * hop) in [-1, 1]."""
        if codes.dim() != 5 or codes.shape[2:4] != (1, 1) or codes.dtype != torch.long:
            raise ValueError(f"expected codes (B, T, 1, 1, Q) long, got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        latents = self.quantizer.decode(codes[:, :, 0, 0, :])  # (B, T, D)
        return self.decoder(rearrange(latents, "b t d -> b d t")).clamp(-1, 1)  # (B, 1, S)

    def training_loss(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        """Waveform L1 + multi-resolution STFT + multi-scale mel + commitment. `reconstruction`: (B, 1, S) unclamped.

        Metrics: loss, waveform_l1, stft, mel, commitment, si_snr (dB), mel_distance, usage_level0,
        perplexity_level0, active_levels (mean levels used under quantizer dropout), restarted.
        """
        self._check_audio(audio)
        latents = rearrange(self.encoder(audio), "b d t -> b t d")  # (B, T, D)
        quantized = self.quantizer(latents, generator)
        reconstruction = self.decoder(rearrange(quantized.quantized, "b t d -> b d t"))  # (B, 1, S)
        predicted, target = reconstruction[:, 0], audio[:, 0]  # (B, S) each
        waveform = F.l1_loss(predicted, target)  # ()
        stft = multi_resolution_stft_loss(predicted, target)  # ()
        mel = multi_scale_mel_loss(predicted, target, self.config.sample_rate)  # ()
        config = self.config
        loss = config.waveform_weight * waveform + config.stft_weight * stft + config.mel_weight * mel + quantized.loss
        with torch.no_grad():
            clamped = predicted.detach().clamp(-1, 1)  # (B, S)
            quality = {"si_snr": si_snr(clamped, target).mean(),
                       "mel_distance": mel_distance(clamped, target, config.sample_rate).mean()}
        metrics = {"loss": loss.detach(), "waveform_l1": waveform.detach(), "stft": stft.detach(), "mel": mel.detach(),
                   **quality, **quantized.metrics}
        values = torch.stack([value.float() for value in metrics.values()]).tolist()  # one host sync
        return TokenizerLoss(loss, reconstruction, dict(zip(metrics, values)))
