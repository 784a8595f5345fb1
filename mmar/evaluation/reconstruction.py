"""Tokenizer reconstruction quality: PSNR and codebook usage on held-out images or clips.

Clips (N, F, 3, H, W) also get PSNR per frame position, so a causal video tokenizer's first frame
(encoded on its own) can be compared with the later frames (compressed in time).
"""

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
def reconstruction_metrics(tokenizer, images: torch.Tensor) -> dict[str, float]:
    """{"psnr": dB, "codebook_usage": fraction of codes used, "num_images": N} (usage only for discrete tokenizers)."""
    tokens, reconstructions = reconstruct(tokenizer.eval(), images)
    report = {"psnr": round(psnr(images, reconstructions), 3), "num_images": len(images)}
    if images.dim() == 5:  # clips (N, F, 3, H, W): PSNR of each frame position over the clips
        per_frame = [psnr(images[:, k], reconstructions[:, k]) for k in range(images.shape[1])]
        report["psnr_per_frame"] = [round(value, 3) for value in per_frame]
        report["psnr_first_frame"] = round(per_frame[0], 3)
        if len(per_frame) > 1:
            later = psnr(images[:, 1:].flatten(0, 1), reconstructions[:, 1:].flatten(0, 1))  # frames 1.. as images
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
    """Originals (top row) above their reconstructions (bottom row)."""
    _, reconstructions = reconstruct(tokenizer.eval(), images)
    if images.dim() == 5:  # clips: per clip, a row of its frames above a row of their reconstructions
        pictures, captions = [], []
        frames = images.shape[1]
        for clip, again in zip(images[:4], reconstructions[:4]):
            pictures += [to_pil(x) for x in clip] + [to_pil(x) for x in again]
            captions += [f"frame {k}" for k in range(frames)] + ["reconstruction"] * frames
        return captioned_grid(pictures, captions, columns=frames, cell=64)
    pictures = [to_pil(x) for x in images] + [to_pil(x) for x in reconstructions]
    captions = ["original"] * len(images) + ["reconstruction"] * len(images)
    return captioned_grid(pictures, captions, columns=len(images), cell=64)
