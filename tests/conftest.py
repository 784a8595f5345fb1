"""Shared fixtures: tiny models and specs for every kind of image segment (CPU, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

from mmar.layout import ModalitySpec
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.transformer import TransformerConfig

# Two threads (the CI machine's cores) unless OMP_NUM_THREADS says otherwise: on a busy machine one
# thread avoids the spin-waiting that made a tiny step take 500x longer.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

TINY = TransformerConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_len=128)

SPECS = {
    "next_token": ModalitySpec("image", 16, 1, 0, (1, 4, 4)),
    "next_scale": ModalitySpec("image", 16, 1, 6, (1, 4, 4), ((1, 1), (2, 2), (3, 3), (4, 4))),
    "flow_matching": ModalitySpec("image", 0, 0, 3, (1, 4, 4)),
}


def tiny_model(head: str, dtype=torch.float32, seed: int = 0, head_config: dict | None = None) -> MMAR:
    torch.manual_seed(seed)
    config = MMARConfig(TINY, [SPECS[head]], {"text": HeadChoice(), "image": HeadChoice(head, head_config or {})})
    return MMAR(config).to(dtype).eval()


def fake_teacher_inputs(spec: ModalitySpec, dtype=torch.float32):
    """A deterministic stand-in for a multi-scale tokenizer's teacher_inputs: depends on every code."""
    sizes = [h * w for h, w in spec.scales]

    def teacher_inputs(codes: torch.Tensor) -> torch.Tensor:
        done = next(k for k in range(1, len(sizes) + 1) if sum(sizes[:k]) == codes.shape[1])
        rows = sum(sizes[1:min(done + 1, len(sizes))])
        base = codes.to(dtype).sum(1, keepdim=True)[:, :, None]  # (B, 1, 1)
        grid = torch.arange(rows * spec.latent_channels, dtype=dtype, device=codes.device).view(1, rows, spec.latent_channels)
        return torch.sin(base * 0.1 + grid * 0.01)  # (B, rows, C)

    return teacher_inputs


@pytest.fixture(params=list(SPECS))
def head_name(request) -> str:
    return request.param


IMAGE_TOKENIZER = {"next_token": "image_vq", "next_scale": "multiscale_vq", "flow_matching": "image_kl"}


def tiny_pipeline(head: str, seed: int = 0):
    """A random-weight pipeline with the real tokenizer class for `head` (default configs, 32x32)."""
    from mmar.pipeline import Pipeline, modality_spec
    from tokenizers_vq import TOKENIZERS

    torch.manual_seed(seed)
    name = IMAGE_TOKENIZER[head]
    tokenizer = TOKENIZERS[name](TOKENIZERS[name].Config()).eval()
    spec = modality_spec("image", tokenizer, (3, 32, 32))
    backbone = TransformerConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_len=256)
    config = MMARConfig(backbone, [spec], {"text": HeadChoice(), "image": HeadChoice(head)})
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    return Pipeline(MMAR(config).eval(), {"text": text, "image": tokenizer})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """An untrained (seeded) image VQ tokenizer folder: what the AR-trainer tests train on."""
    from tokenizers_vq import TOKENIZERS

    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    torch.manual_seed(0)
    TOKENIZERS["image_vq"](TOKENIZERS["image_vq"].Config(base_channels=16)).save_pretrained(path)
    return path
