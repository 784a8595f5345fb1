"""MMAR: one shared causal transformer, the input embeddings of every modality, and the heads.

`MMAR` owns every input embedding: ids go through one token table; `<in:name>` positions go
through a per-tokenizer linear in-projection of float vectors (next-scale teacher inputs, flow
latents), plus a learned scale embedding for next-scale. Training loss lives in `forward`;
generation lives in `mmar/generate.py`. The transformer never branches on head type.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heads import HEADS, HeadOutput, HeadSpec
from mmar.layout import ModalitySpec, TokenLayout
from mmar.packing import Batch
from mmar.transformer import Transformer, TransformerConfig
from tokenizers_vq.base import load_weights


@dataclass
class HeadChoice:
    name: str = "next_token"  # key of heads.HEADS
    config: dict[str, Any] = field(default_factory=dict)  # fields of that head's Config


@dataclass
class MMARConfig:
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    modalities: list[ModalitySpec] = field(default_factory=list)
    heads: dict[str, HeadChoice] = field(default_factory=dict)  # modality (incl. "text") -> head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MMARConfig":
        modalities = [
            ModalitySpec(**{**m, "grid": tuple(m["grid"]), "scales": tuple(tuple(s) for s in m["scales"])})
            for m in values["modalities"]
        ]
        heads = {k: HeadChoice(**v) for k, v in values["heads"].items()}
        return cls(TransformerConfig(**values["transformer"]), modalities, heads)


class InProjection(nn.Module):
    """Float vectors (N, C) at `<in:name>` positions -> embeddings (N, D), plus a scale embedding."""

    def __init__(self, channels: int, dim: int, num_scales: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, dim)
        self.scale_embedding = nn.Embedding(max(num_scales, 1), dim)

    def forward(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.proj(values) + self.scale_embedding(scale)  # (N, D)


class MMAR(nn.Module):
    def __init__(self, config: MMARConfig) -> None:
        super().__init__()
        self.config = config
        self.layout = TokenLayout(config.modalities)
        dim = config.transformer.dim
        self.token_embedding = nn.Embedding(self.layout.vocab_size, dim)
        self.transformer = Transformer(config.transformer)
        self.in_projections = nn.ModuleDict({
            spec.name: InProjection(spec.latent_channels, dim, len(spec.scales))
            for spec in config.modalities if spec.kind != "codes"
        })
        self.heads = nn.ModuleDict({name: self._make_head(name, choice) for name, choice in config.heads.items()})
        for part in (self.token_embedding, self.transformer, self.in_projections):  # heads init themselves
            part.apply(self._init_weights)
        for name, parameter in self.transformer.named_parameters():
            if name.endswith(("attention.out.weight", "mlp.down.weight")):  # GPT-2 scaled residual init
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.transformer.num_layers))

    def _make_head(self, modality: str, choice: HeadChoice) -> nn.Module:
        if choice.name not in HEADS:
            raise ValueError(f"unknown head {choice.name!r}; known: {sorted(HEADS)}")
        head_class = HEADS[choice.name]
        dim = self.config.transformer.dim
        if modality == "text":
            spec = HeadSpec(dim=dim, codebook_size=self.layout.text_vocab_size)
        else:
            m = self.layout.modalities[modality]
            spec = HeadSpec(dim=dim, codebook_size=m.codebook_size, num_codebooks=max(m.num_codebooks, 1),
                            latent_channels=m.latent_channels if m.kind == "vectors" else 0)
        return head_class(head_class.Config(**choice.config), spec)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # --- embeddings ------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, vectors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """ids (B, T) + vectors {name: (flat index (N,), values (N, C), scale (N,))} -> (B, T, D)."""
        x = self.token_embedding(ids)  # (B, T, D)
        if not vectors:
            return x
        flat = x.flatten(0, 1)  # (B*T, D)
        for name, (index, values, scale) in vectors.items():
            projected = self.in_projections[name](values.to(flat.dtype), scale)  # (N, D)
            flat = flat.index_copy(0, index, projected.to(flat.dtype))
        return flat.view_as(x)

    # --- training ---------------------------------------------------------------------------
    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, HeadOutput]:
        """Summed loss and target count per head (the trainer normalises by the global count)."""
        x = self.embed(batch.ids, batch.vectors)  # (B, T, D)
        slots = torch.arange(x.shape[1], device=x.device)  # (T,)
        hidden = self.transformer(x, slots, batch.positions, batch.block).flatten(0, 1)  # (B*T, D)
        return {name: self.heads[name].loss(hidden[t.index], t.target, generator) for name, t in batch.targets.items()}

    # --- save / load ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_model(self, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "MMAR":
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no model config at {config_path}; the model folder is incomplete")
        try:
            config = MMARConfig.from_dict(json.loads(config_path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{config_path} is not a valid MMAR config ({error})") from error
        model = cls(config)
        load_weights(model, directory / "model.safetensors")
        return model.eval()
