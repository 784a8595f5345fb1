"""Continuous KL image tokenizer: shapes and the contract, a short training run that must reconstruct
held-out shapes above a stated PSNR, calibration of the latent scaling factor, and save/load."""

from __future__ import annotations

import pytest
import torch

from mmar.data.shapes import ShapesDataset
from tokenizers_vq import TOKENIZERS, load_tokenizer
from tokenizers_vq.image_kl import ImageKL, ImageKLConfig

#: Held-out PSNR (dB, peak-to-peak 2) that the tiny test model (one downsample: 16x16 latents, so it
#: learns in seconds) must beat after TRAIN_STEPS steps of batch 8. Measured 25.3 dB in ~28 s on one
#: thread; for scale, an all-black guess scores 11.8 dB and a 4x4 average-pool + upsample 19.0 dB.
MIN_PSNR = 22.0
TRAIN_STEPS = 500


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).pow(2).mean()))


def shapes(num_items: int, seed: int) -> torch.Tensor:
    dataset = ShapesDataset(num_items, 32, seed=seed)
    return torch.stack([dataset[i][0] for i in range(num_items)])  # (B, 3, 32, 32)


@pytest.fixture(scope="module")
def trained() -> ImageKL:
    """A small ImageKL trained briefly on procedural shapes (one thread: the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ImageKL(ImageKLConfig(block_out_channels=(16, 32), norm_num_groups=8, latent_channels=4))
        images = shapes(2048, seed=0)  # (B, 3, 32, 32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.99), weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=TRAIN_STEPS, pct_start=0.1)
        generator = torch.Generator().manual_seed(0)
        for _ in range(TRAIN_STEPS):
            batch = images[torch.randint(len(images), (8,), generator=generator)]  # (8, 3, 32, 32)
            output = model.training_loss(batch, generator=generator)
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        model.calibrate(images[:512])
        yield model
    finally:
        torch.set_num_threads(threads)


def test_contract_shapes():
    assert TOKENIZERS["image_kl"] is ImageKL
    model = ImageKL(ImageKLConfig(block_out_channels=(16, 32, 32), norm_num_groups=8, latent_channels=6))
    assert (model.modality, model.codebook_size, model.num_codebooks, model.latent_channels) == ("image", 0, 0, 6)
    assert model.token_shape((3, 32, 32)) == (8, 8)
    images = torch.rand(2, 3, 32, 32) * 2 - 1  # (B, 3, H, W)
    with torch.no_grad():
        latents = model.encode(images)  # (B, 8, 8, 6)
        assert latents.shape == (2, 8, 8, 6) and latents.dtype == torch.float
        decoded = model.decode(latents)  # (B, 3, 32, 32)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    with pytest.raises(ValueError):
        model.token_shape((3, 30, 32))


def test_training_noise_comes_from_the_generator():
    torch.manual_seed(0)
    model = ImageKL(ImageKLConfig(block_out_channels=(16, 32), norm_num_groups=8))
    images = shapes(4, seed=1)  # (B, 3, 32, 32)
    first = model.training_loss(images, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG must not matter
    again = model.training_loss(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first.loss, again.loss)
    assert first.reconstruction.shape == images.shape
    assert set(first.metrics) == {"reconstruction", "kl", "psnr"}


def test_reconstructs_held_out_shapes(trained):
    held_out = shapes(256, seed=123)  # (B, 3, 32, 32): other seed, other items
    with torch.no_grad():
        reconstruction = trained.decode(trained.encode(held_out))  # (B, 3, 32, 32)
    assert psnr(reconstruction, held_out) > MIN_PSNR


def test_calibrate_gives_unit_std_latents(trained):
    with torch.no_grad():
        latents = trained.encode(shapes(256, seed=7))  # (B, 16, 16, C)
    assert trained.config.scaling_factor != 1.0
    assert 0.8 < latents.std().item() < 1.25


def test_scaling_factor_survives_save_and_load(trained, tmp_path):
    trained.save_pretrained(tmp_path / "kl")
    loaded = load_tokenizer(tmp_path / "kl")
    assert isinstance(loaded, ImageKL)
    assert loaded.config == trained.config and loaded.config.scaling_factor == trained.config.scaling_factor
    images = shapes(8, seed=9)  # (B, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), trained.encode(images))
        latents = trained.encode(images)  # (B, 16, 16, C)
        assert torch.equal(loaded.decode(latents), trained.decode(latents))
