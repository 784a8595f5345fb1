"""Tokenizer reconstruction quality on held-out items: PSNR and codebook usage for images and clips
(clips also per frame position, so a causal video tokenizer's first frame, encoded on its own, can be
compared with the later frames, compressed in time); SI-SNR, mel distance and bitrate at every
number of residual levels for audio codecs."""

from __future__ import annotations

import math

import torch
from PIL import Image

from mmar.images import captioned_grid, to_pil


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (measured on the [0, 1] scale), over the batch."""
    mse = ((reference.float() - reconstruction.float()) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # (B,)
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def reconstruct(tokenizer, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (tokens, reconstructions) for images (N, 3, H, W) or clips (N, F, 3, H, W)."""
    tokens, outputs = [], []
    for chunk in images.split(batch_size):
        encoded = tokenizer.encode(chunk)
        tokens.append(encoded)
        outputs.append(tokenizer.decode(encoded))
    return torch.cat(tokens), torch.cat(outputs)


@torch.no_grad()
def audio_levels_report(codec, audio: torch.Tensor, tokens: torch.Tensor, batch_size: int = 64) -> dict[str, dict]:
    """Per number of residual levels q = 1, 2, 4, ..., Q: {"si_snr": dB, "mel_distance", "bitrate": bit/s}."""
    from tokenizers_vq.audio_losses import mel_distance, si_snr

    levels = sorted({q for q in (1, 2, 4, 8) if q < codec.num_codebooks} | {codec.num_codebooks})
    report = {}
    for q in levels:
        snr, mel = [], []
        for chunk, codes in zip(audio.split(batch_size), tokens.split(batch_size)):
            decoded = codec.decode(codes[..., :q])  # (b, 1, S)
            snr.append(si_snr(decoded[:, 0].float(), chunk[:, 0].float()))
            mel.append(mel_distance(decoded[:, 0].float(), chunk[:, 0].float(), codec.config.sample_rate))
        report[str(q)] = {"si_snr": round(float(torch.cat(snr).mean()), 3),
                          "mel_distance": round(float(torch.cat(mel).mean()), 4), "bitrate": codec.bitrate(q)}
    return report


@torch.no_grad()
def reconstruction_metrics(tokenizer, items: torch.Tensor) -> dict[str, float]:
    """Images: {"psnr": dB, "num_images": N}; audio: {"si_snr": dB, "mel_distance", "bitrate", "levels":
    per number of levels, "num_clips": N}; plus "codebook_usage" (fraction of codes used) and
    "perplexity" for discrete tokenizers."""
    tokens, reconstructions = reconstruct(tokenizer.eval(), items)
    if tokenizer.modality == "audio":
        levels = audio_levels_report(tokenizer, items, tokens)
        report = {**levels[str(tokenizer.num_codebooks)], "levels": levels, "num_clips": len(items)}
    else:
        report = {"psnr": round(psnr(items, reconstructions), 3), "num_images": len(items)}
    if tokenizer.modality == "video":  # clips (N, F, 3, H, W): PSNR of each frame position over the clips
        per_frame = [psnr(items[:, k], reconstructions[:, k]) for k in range(items.shape[1])]
        report["psnr_per_frame"] = [round(value, 3) for value in per_frame]
        report["psnr_first_frame"] = round(per_frame[0], 3)
        if len(per_frame) > 1:
            later = psnr(items[:, 1:].flatten(0, 1), reconstructions[:, 1:].flatten(0, 1))  # frames 1.. as images
            report["psnr_later_frames"] = round(later, 3)
    if tokenizer.codebook_size:
        used = torch.unique(tokens).numel()
        report["codebook_usage"] = round(used / (tokenizer.codebook_size * max(tokenizer.num_codebooks, 1)), 4)
        counts = torch.bincount(tokens.flatten(), minlength=tokenizer.codebook_size).float()
        probabilities = counts / counts.sum()
        entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
        report["perplexity"] = round(math.exp(float(entropy)), 2)
    return report


@torch.no_grad()
def reconstruction_grid(tokenizer, images: torch.Tensor) -> Image.Image:
    """Originals (top row) above their reconstructions (bottom row); audio as spectrogram previews."""
    _, reconstructions = reconstruct(tokenizer.eval(), images)
    if tokenizer.modality == "video":  # clips: per clip, a row of its frames above a row of their reconstructions
        pictures, captions = [], []
        frames = images.shape[1]
        for clip, again in zip(images[:4], reconstructions[:4]):
            pictures += [to_pil(x) for x in clip] + [to_pil(x) for x in again]
            captions += [f"frame {k}" for k in range(frames)] + ["reconstruction"] * frames
        return captioned_grid(pictures, captions, columns=frames, cell=64)
    if tokenizer.modality == "image":
        pictures = [to_pil(x) for x in images] + [to_pil(x) for x in reconstructions]
    else:
        from mmar.media import to_preview

        pictures = [to_preview(tokenizer.modality, x) for x in torch.cat([images, reconstructions])]
    captions = ["original"] * len(images) + ["reconstruction"] * len(images)
    return captioned_grid(pictures, captions, columns=len(images), cell=64)
