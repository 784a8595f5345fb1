"""ImageVQ and its quantisers: both quantisers train, dead codes come back, FSQ indices round-trip."""

from __future__ import annotations

import pytest
import torch

from mmar.data.shapes import ShapesDataset
from tokenizers_vq.fsq import FiniteScalarQuantizer
from tokenizers_vq.image_vq import ImageVQ, ImageVQConfig
from tokenizers_vq.vector_quantizer import VectorQuantizer

TINY = {"base_channels": 8, "channel_multipliers": (1, 2, 4), "codebook_size": 64}


def shapes(num_items: int, seed: int = 0) -> torch.Tensor:
    dataset = ShapesDataset(num_items, size=32, seed=seed)
    return torch.stack([dataset[i][0] for i in range(num_items)])  # (N, 3, 32, 32)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_both_quantizers_train_on_shapes(quantizer):
    torch.manual_seed(0)
    model = ImageVQ(ImageVQConfig(**TINY, quantizer=quantizer, fsq_levels=(4, 4, 4))).train()
    images = shapes(256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        batch = images[torch.randint(len(images), (16,), generator=generator)]  # (16, 3, 32, 32)
        result = model.training_loss(batch, generator)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, f"{quantizer}: loss went from {first:.4f} to only {last:.4f}"
    assert {"mse", "psnr", "usage", "perplexity"} <= set(result.metrics)
    assert 0 < result.metrics["usage"] <= 1


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_dead_code_restart_revives_codes(update):
    # Every vector lies near +e0 and all codes but one point at -e0: without restarts only one code
    # would ever be used.
    quantizer = VectorQuantizer(4, 4, 16, codebook_update=update, dead_code_steps=2).train()
    codebook = torch.zeros(16, 4)  # (K, d)
    codebook[:, 0] = -1.0
    codebook[0, 0] = 1.0
    quantizer.codebook.data.copy_(codebook)
    if update == "ema":
        quantizer.embed_sum.copy_(codebook)
    quantizer.unused_steps.zero_()  # no data init: the codes must die first
    vectors = torch.randn(256, 4, generator=torch.Generator().manual_seed(1)) * 0.3  # (N, 4)
    vectors[:, 0] += 2.0
    with torch.no_grad():
        before = quantizer.eval()(vectors).indices.unique().numel()
    assert before == 1

    global_state = torch.get_rng_state()
    generator = torch.Generator().manual_seed(0)
    quantizer.train()
    restarted = 0.0
    for _ in range(4):
        restarted += quantizer(vectors, generator).metrics["restarted"].item()
    assert torch.equal(torch.get_rng_state(), global_state), "restarts must not use the global RNG"
    assert restarted >= 15
    with torch.no_grad():
        after = quantizer.eval()(vectors).indices.unique().numel()
    assert after >= 8, f"only {after} codes in use after restarts"


def test_restart_is_reproducible_from_the_generator():
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        quantizer = VectorQuantizer(8, 4, 32, dead_code_steps=1).train()
        vectors = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))  # (N, 8)
        with torch.no_grad():
            quantizer(vectors, torch.Generator().manual_seed(seed))
        return quantizer.codebook.clone()

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_fsq_indices_round_trip():
    fsq = FiniteScalarQuantizer(16, (8, 5, 5, 5))
    assert fsq.codebook_size == 1000
    indices = torch.arange(1000)  # (K,)
    codes = fsq.indices_to_codes(indices)  # (K, 4)
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    # Any input lands on the grid: exactly L_i values per channel.
    grid = fsq.quantize(torch.randn(5000, 4) * 3)  # (N, 4)
    assert [grid[:, i].unique().numel() for i in range(4)] == [8, 5, 5, 5]


def test_encode_decode_shapes_and_errors():
    model = ImageVQ(ImageVQConfig(**TINY)).eval()
    images = shapes(2)
    assert model.token_shape((3, 32, 32)) == (8, 8)
    assert model.token_shape((3, 64, 48)) == (16, 12)
    with torch.no_grad():
        codes = model.encode(images)  # (2, 8, 8)
        decoded = model.decode(codes)  # (2, 3, 32, 32)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode(torch.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match="channel_multipliers"):
        ImageVQConfig(channel_multipliers=(1, 2), num_downsamples=2)


def test_training_loss_uses_only_the_given_generator():
    torch.manual_seed(0)
    model = ImageVQ(ImageVQConfig(**TINY, dead_code_steps=1)).train()
    state = torch.get_rng_state()
    model.training_loss(shapes(4), torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
