"""Spectral distances between waveforms: multi-resolution STFT and mel losses, SI-SNR.

- multi-resolution STFT loss (spectral convergence + log-magnitude L1 over several FFT sizes):
  Yamamoto et al. 2020, "Parallel WaveGAN", arXiv:1910.11480, section 2.3;
- multi-scale mel (log-mel L1) reconstruction loss: Défossez et al. 2022, "EnCodec",
  arXiv:2210.13438, section 3.4, and Kumar et al. 2023, "DAC", arXiv:2306.06546;
- scale-invariant signal-to-noise ratio: Le Roux et al. 2019, "SDR - half-baked or well done?",
  arXiv:1811.02508.

The mel filterbank comes from torchaudio's functional transforms (imported here, inside the
function, so importing the tokenizers does not load torchaudio); the STFT is torch's own.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# Floors of the logarithms in the losses (not in `mel_distance`, the metric, which keeps 1e-5).
# A tiny floor (1e-5) makes the log distance of the many near-silent bins of tonal, gappy audio
# dominate the loss: an untrained decoder lowers it fastest by going silent, and the codec's output
# energy collapsed. These floors sit ~55 dB under the loudest bins of a [-1, 1] clip at n_fft 1024.
STFT_FLOOR = 1e-1  # |STFT| magnitude
MEL_FLOOR = 1e-2  # mel power


@lru_cache(maxsize=16)
def _mel_filterbank(n_fft: int, num_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_fft // 2 + 1, num_mels) triangular mel filters (HTK scale), on the CPU, float32."""
    import torchaudio  # lazy: only losses and metrics need it

    return torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, num_mels, sample_rate,
                                                 norm="slaney", mel_scale="slaney")  # (F, M)


def magnitudes(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """audio (B, S) -> |STFT| (B, F, frames) with a Hann window and hop n_fft // 4."""
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)  # (n_fft,)
    spectrum = torch.stft(audio, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)  # (B, F, frames)
    return spectrum.abs()  # (B, F, frames)


def log_mel(audio: torch.Tensor, sample_rate: int, n_fft: int = 1024, num_mels: int = 64,
            floor: float = 1e-5) -> torch.Tensor:
    """audio (B, S) -> log10(mel power + floor) (B, M, frames).

    An added floor, not a clamp: a clamp has no gradient below it, and a quiet untrained decoder
    would get no signal from the spectral losses at all."""
    filters = _mel_filterbank(n_fft, num_mels, sample_rate).to(audio.device, audio.dtype)  # (F, M)
    power = magnitudes(audio, n_fft).pow(2)  # (B, F, frames)
    mel = torch.einsum("bft,fm->bmt", power, filters)  # (B, M, frames)
    return (mel + floor).log10()  # (B, M, frames)


def multi_resolution_stft_loss(prediction: torch.Tensor, target: torch.Tensor,
                               sizes: tuple[int, ...] = (256, 512, 1024), floor: float = STFT_FLOOR) -> torch.Tensor:
    """Mean over FFT sizes of spectral convergence + log-magnitude L1; waveforms (B, S) -> () loss."""
    total = prediction.new_zeros(())  # ()
    for n_fft in sizes:
        predicted, wanted = magnitudes(prediction, n_fft), magnitudes(target, n_fft)  # (B, F, frames) each
        convergence = (wanted - predicted).norm() / wanted.norm().clamp_min(1e-7)  # ()
        log_distance = ((wanted + floor).log() - (predicted + floor).log()).abs().mean()  # () floored, not clamped
        total = total + convergence + log_distance
    return total / len(sizes)


def multi_scale_mel_loss(prediction: torch.Tensor, target: torch.Tensor, sample_rate: int,
                         sizes: tuple[int, ...] = (256, 512, 1024), floor: float = MEL_FLOOR) -> torch.Tensor:
    """Mean over FFT sizes of the log-mel L1 distance; waveforms (B, S) -> () loss."""
    total = prediction.new_zeros(())  # ()
    for n_fft in sizes:
        num_mels = min(64, n_fft // 8)
        predicted = log_mel(prediction, sample_rate, n_fft, num_mels, floor)  # (B, M, frames)
        total = total + (predicted - log_mel(target, sample_rate, n_fft, num_mels, floor)).abs().mean()
    return total / len(sizes)


def mel_distance(prediction: torch.Tensor, target: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Per-item mean |log10 mel difference| at n_fft 1024, 64 mels: waveforms (B, S) -> (B,)."""
    difference = log_mel(prediction, sample_rate) - log_mel(target, sample_rate)  # (B, M, frames)
    return difference.abs().flatten(1).mean(1)  # (B,)


def si_snr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB per item: waveforms (B, S) -> (B,). Silence on both sides gives 0 dB-ish."""
    prediction = prediction - prediction.mean(-1, keepdim=True)  # (B, S)
    target = target - target.mean(-1, keepdim=True)  # (B, S)
    scale = (prediction * target).sum(-1, keepdim=True) / target.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)  # (B, 1)
    projection = scale * target  # (B, S)
    noise = prediction - projection  # (B, S)
    ratio = projection.pow(2).sum(-1).clamp_min(1e-8) / noise.pow(2).sum(-1).clamp_min(1e-8)  # (B,)
    return 10 * ratio.log10()  # (B,)
