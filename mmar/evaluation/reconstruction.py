"""Tokenizer reconstruction quality: PSNR and codebook usage on held-out images."""

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
def reconstruct(tokenizer, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (tokens, reconstructions) for images (N, 3, H, W)."""
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
    pictures = [to_pil(x) for x in images] + [to_pil(x) for x in reconstructions]
    captions = ["original"] * len(images) + ["reconstruction"] * len(images)
    return captioned_grid(pictures, captions, columns=len(images), cell=64)
