"""MultiscaleVQ against a single-scale VQ of the same final resolution, and its coarse prefixes.

Both tokenizers get the same encoder/decoder widths, codebook size, code dimension, data, optimiser
and number of steps; the residual scales must not cost reconstruction quality (tolerance below).
"""

from __future__ import annotations

import pytest
import torch

from mmar.data.shapes import ShapesDataset
from tokenizers_vq.image_vq import ImageVQ, ImageVQConfig
from tokenizers_vq.multiscale_vq import MultiscaleVQ, MultiscaleVQConfig

# 16x16 images with one downsampling (an 8x8 latent, as the 32x32 recipe has) train ~4x faster on CPU.
SHARED = {"image_size": 16, "base_channels": 16, "channel_multipliers": (1, 2), "num_downsamples": 1,
          "codebook_size": 128, "code_dim": 8}
STEPS, BATCH = 300, 32
#: multi-scale PSNR may trail the single-scale one by at most this many dB
TOLERANCE_DB = 1.5


def shapes(num_items: int, seed: int) -> torch.Tensor:
    dataset = ShapesDataset(num_items, size=16, seed=seed)
    return torch.stack([dataset[i][0] for i in range(num_items)])  # (N, 3, 16, 16)


def psnr(reconstruction: torch.Tensor, images: torch.Tensor) -> float:
    mse = (reconstruction - images).pow(2).mean()
    return (10 * torch.log10(4.0 / mse)).item()  # peak-to-peak 2 for images in [-1, 1]


def trained(tokenizer, images: torch.Tensor):
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    tokenizer.train()
    for _ in range(STEPS):
        batch = images[torch.randint(len(images), (BATCH,), generator=generator)]  # (B, 3, 16, 16)
        loss = tokenizer.training_loss(batch, generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tokenizer.eval()


@pytest.fixture(scope="module")
def pair():
    images, held_out = shapes(1024, seed=0), shapes(128, seed=1)
    torch.manual_seed(0)
    single = trained(ImageVQ(ImageVQConfig(**SHARED)), images)
    torch.manual_seed(0)
    multi = trained(MultiscaleVQ(MultiscaleVQConfig(**SHARED, scales=(1, 2, 3, 4, 6, 8))), images)
    return single, multi, held_out


@torch.no_grad()
def test_all_scales_reconstruct_as_well_as_single_scale(pair):
    single, multi, held_out = pair
    single_psnr = psnr(single.decode(single.encode(held_out)), held_out)
    multi_psnr = psnr(multi.decode(multi.encode(held_out)), held_out)
    assert single_psnr > 19, f"the single-scale baseline did not train ({single_psnr:.1f} dB)"
    assert multi_psnr >= single_psnr - TOLERANCE_DB, (
        f"multi-scale {multi_psnr:.2f} dB vs single-scale {single_psnr:.2f} dB (tolerance {TOLERANCE_DB} dB)")


@torch.no_grad()
def test_prefixes_decode_to_coarser_valid_images(pair):
    _, multi, held_out = pair
    codes = multi.encode(held_out)  # (N, L)
    assert codes.shape == (len(held_out), multi.prefix_lengths[-1])
    scores = []
    for length in multi.prefix_lengths[1:]:
        images = multi.decode(codes[:, :length])  # (N, 3, 16, 16)
        assert images.shape == held_out.shape and torch.isfinite(images).all()
        assert images.min() >= -1 and images.max() <= 1
        scores.append(psnr(images, held_out))
    # More scales, closer to the input: the full set beats every strict prefix, the 1x1 scale is worst.
    assert scores[-1] > max(scores[:-1]), scores
    assert scores[0] < min(scores[1:]), scores
    # The coarse image is a blur, not noise: its colours still follow the input's on average.
    coarse = multi.decode(codes[:, :multi.prefix_lengths[3]])  # three scales (1, 2, 3)
    correlation = torch.corrcoef(torch.stack([coarse.flatten(), held_out.flatten()]))[0, 1]
    assert correlation > 0.3, f"3-scale reconstruction barely follows the input (r = {correlation:.2f})"
