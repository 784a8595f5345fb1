"""The tokenizer contract, run unchanged over every entry of `TOKENIZERS`.

A new tokenizer is covered by adding its registry line (plus, if its default config is slow on a
CPU, a tiny override below, and sample data if it brings a new modality).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tokenizers_vq import TOKENIZERS, load_tokenizer
from tokenizers_vq.base import TokenizerLoss

# Per-key config overrides that make a tokenizer tiny. Keys a tokenizer's Config lacks are ignored,
# so a guess for a tokenizer written elsewhere does no harm.
TINY: dict[str, dict] = {
    "image_vq": {"base_channels": 8, "channel_multipliers": (1, 1, 2), "codebook_size": 32},
    "multiscale_vq": {"base_channels": 8, "channel_multipliers": (1, 1, 2), "codebook_size": 32,
                      "code_dim": 8},
    "image_kl": {"base_channels": 8, "channel_multipliers": (1, 1, 2)},
    "audio_codec": {"base_channels": 4, "max_channels": 16, "dilations": (1,), "latent_dim": 8, "codebook_size": 16},
    "video_vq": {"base_channels": 8, "channel_multipliers": (1, 1, 2)},
}
# Further configs of a registered tokenizer that change its kind of tokens (codes vs latents), each
# run through the same contract: id -> (registry name, overrides).
VARIANTS: dict[str, tuple[str, dict]] = {
    "video_vq[kl]": ("video_vq", {**TINY["video_vq"], "bottleneck": "kl"}),
}


def build(name: str, overrides: dict | None = None):
    cls = TOKENIZERS[name]
    fields = {field.name for field in dataclasses.fields(cls.Config)}
    overrides = {key: value for key, value in (TINY.get(name, {}) if overrides is None else overrides).items()
                 if key in fields}
    torch.manual_seed(0)
    return cls(cls.Config(**overrides))


def sample_data(tokenizer):
    """(data, data_shape, batched) for the tokenizer's modality."""
    if tokenizer.modality == "text":
        text = "a red circle at the top left"
        return text, (len(text.encode("utf-8")),), False
    if tokenizer.modality == "image":
        from mmar.data.shapes import ShapesDataset

        size = getattr(tokenizer.config, "image_size", 32)
        dataset = ShapesDataset(2, size=size, seed=0)
        images = torch.stack([dataset[i][0] for i in range(2)])  # (2, 3, S, S)
        return images, tuple(images.shape[1:]), True
    if tokenizer.modality == "audio":
        from mmar.data.notes import NotesDataset

        rate = getattr(tokenizer.config, "sample_rate", 16000)
        dataset = NotesDataset(2, seconds=0.5, sample_rate=rate, seed=0)
        clips = torch.stack([dataset[i][0] for i in range(2)])  # (2, 1, S)
        return clips, tuple(clips.shape[1:]), True
    if tokenizer.modality == "video":
        from mmar.data.moving_shapes import MovingShapesDataset

        dataset = MovingShapesDataset(2, size=32, num_frames=5, seed=0)
        clips = torch.stack([dataset[i][0] for i in range(2)])  # (2, 5, 3, 32, 32)
        return clips, tuple(clips.shape[1:]), True
    pytest.fail(f"no sample data for modality {tokenizer.modality!r}: add it to sample_data()")


@pytest.mark.parametrize("name", sorted(TOKENIZERS) + sorted(VARIANTS))
def test_tokenizer_contract(name, tmp_path):
    registry_name, overrides = VARIANTS.get(name, (name, None))
    tokenizer = build(registry_name, overrides)
    assert type(tokenizer).registry_name() == registry_name, "registry key must equal the file stem"
    assert isinstance(tokenizer.modality, str) and tokenizer.modality
    assert tokenizer.codebook_size >= 0 and tokenizer.num_codebooks >= 0 and tokenizer.latent_channels >= 0
    data, data_shape, batched = sample_data(tokenizer)
    has_parameters = any(True for _ in tokenizer.parameters())

    # One training step first, so the saved state (weights, EMA buffers) is not just the init.
    if has_parameters:
        tokenizer.train()
        generator = torch.Generator().manual_seed(0)
        result = tokenizer.training_loss(data, generator)
        assert isinstance(result, TokenizerLoss)
        assert result.loss.dim() == 0 and torch.isfinite(result.loss)
        assert result.reconstruction.shape == data.shape
        assert all(isinstance(value, float) for value in result.metrics.values())
        tokenizer.zero_grad()
        result.loss.backward()
        grads = [p.grad for p in tokenizer.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads), "no gradient reaches the parameters"
    tokenizer.eval()

    # encode: shapes, dtypes, ranges.
    token_shape = tuple(tokenizer.token_shape(data_shape))
    with torch.no_grad():
        tokens = tokenizer.encode(data)
    batch = (data.shape[0],) if batched else ()
    if tokenizer.codebook_size > 0:
        assert tokens.dtype == torch.long
        levels = (tokenizer.num_codebooks,) if tokenizer.num_codebooks > 1 else ()  # RVQ: a trailing level axis
        assert tokens.shape == (*batch, *token_shape, *levels)
        assert int(tokens.min()) >= 0 and int(tokens.max()) < tokenizer.codebook_size
    else:
        assert tokens.is_floating_point()
        assert tokenizer.latent_channels > 0
        assert tokens.shape == (*batch, *token_shape, tokenizer.latent_channels)
        assert torch.isfinite(tokens).all()

    # decode: back to data of the input's shape.
    with torch.no_grad():
        decoded = tokenizer.decode(tokens)
    if isinstance(data, str):
        assert decoded == data
    else:
        assert decoded.shape == data.shape and decoded.is_floating_point()
        assert torch.isfinite(decoded).all()

    # save -> load gives the same tokenizer.
    tokenizer.save_pretrained(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert type(loaded) is type(tokenizer) and loaded.config == tokenizer.config
    with torch.no_grad():
        again = loaded.encode(data)
    assert torch.equal(again, tokens)

    # A truncated weights file is a clear ValueError, not a crash or a half-loaded model.
    weights = tmp_path / "saved" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError):
        load_tokenizer(tmp_path / "saved")
