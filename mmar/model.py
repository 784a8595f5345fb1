"""MMAR: one shared causal transformer, the input embeddings of every modality, and the heads.

`MMAR` owns every input embedding, and `embed_tokens` is the one place that turns a modality's
values into embeddings, for training (`embed`) and generation alike: ids go through one token
table; `<in:name>` positions go through a per-tokenizer linear in-projection of float vectors
(next-scale teacher inputs, flow latents, plus a learned scale embedding for next-scale) or, for
multi-codebook codes (n, Q), through a `CodeEmbedding` (the sum of per-level embeddings, MusicGen).
Training loss lives in `forward`; generation lives in `mmar/generate.py`. The transformer never
branches on head type.
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

from heads import HEADS, IGNORE_INDEX, HeadOutput, HeadSpec
from mmar.config import from_dict, load_json, validate
from mmar.layout import ModalitySpec, TokenLayout
from mmar.packing import Batch
from mmar.transformer import Transformer, TransformerConfig
from tokenizers_vq.base import load_weights


@dataclass
class HeadChoice:
    name: str = "next_token"  # key of heads.HEADS
    config: dict[str, Any] = field(default_factory=dict)  # fields of that head's Config

    def check(self) -> None:
        if self.name not in HEADS:
            raise ValueError(f"head {self.name!r} is unknown; known: {', '.join(HEADS)}")
        try:
            validate(from_dict(HEADS[self.name].Config, dict(self.config)))
        except (ValueError, TypeError) as error:
            raise ValueError(f"the {self.name} head's config: {error}") from error


@dataclass
class MMARConfig:
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    modalities: list[ModalitySpec] = field(default_factory=list)
    heads: dict[str, HeadChoice] = field(default_factory=dict)  # modality (incl. "text") -> head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        names = [spec.name for spec in self.modalities]
        missing = [name for name in ["text", *names] if name not in self.heads]
        extra = [name for name in self.heads if name not in ["text", *names]]
        if missing or extra or len(set(names)) != len(names):
            raise ValueError(f"heads must name one head per modality (text, {', '.join(names)}): "
                             f"missing {missing}, not a modality {extra}")


class InProjection(nn.Module):
    """Float vectors (N, C) at `<in:name>` positions -> embeddings (N, D), plus a scale embedding."""

    def __init__(self, channels: int, dim: int, num_scales: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, dim)
        self.scale_embedding = nn.Embedding(max(num_scales, 1), dim)

    def forward(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.proj(values) + self.scale_embedding(scale)  # (N, D)


def check_head(head: str, spec: ModalitySpec) -> None:
    """A one-line ValueError when head `head` cannot predict `spec`'s tokens (checked before any encoding)."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known: {sorted(HEADS)}")
    kinds = HEADS[head].token_kinds
    if spec.kind not in kinds:
        described = {"codes": "discrete codes", "scales": "multi-scale codes", "vectors": "continuous latents"}
        raise ValueError(f"head {head!r} predicts {' or '.join(described[k] for k in kinds)}, but the tokenizer of "
                         f"{spec.name!r} gives {described[spec.kind]}; pick a head among "
                         f"{sorted(h for h, c in HEADS.items() if spec.kind in c.token_kinds)}")


class CodeEmbedding(nn.Module):
    """Multi-codebook codes (N, Q) -> (N, D): the sum of one embedding per level; -100 (a hole) has its own."""

    def __init__(self, codebook_size: int, num_codebooks: int, dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.levels = nn.ModuleList(nn.Embedding(codebook_size + 1, dim) for _ in range(num_codebooks))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.long().masked_fill(codes == IGNORE_INDEX, self.codebook_size)  # (N, Q) holes -> last row
        return sum(level(codes[:, q]) for q, level in enumerate(self.levels))  # (N, D)


class MMAR(nn.Module):
    def __init__(self, config: MMARConfig) -> None:
        super().__init__()
        self.config = validate(config)
        self.layout = TokenLayout(config.modalities)
        dim = config.transformer.dim
        self.token_embedding = nn.Embedding(self.layout.vocab_size, dim)
        self.transformer = Transformer(config.transformer)
        self.in_projections = nn.ModuleDict({
            spec.name: InProjection(spec.latent_channels, dim, len(spec.scales))
            for spec in config.modalities if spec.kind != "codes"
        })
        self.code_embeddings = nn.ModuleDict({
            spec.name: CodeEmbedding(spec.codebook_size, spec.num_codebooks, dim)
            for spec in config.modalities if spec.multi_codebook
        })
        self.heads = nn.ModuleDict({name: self._make_head(name, choice) for name, choice in config.heads.items()})
        for part in (self.token_embedding, self.transformer, self.in_projections, self.code_embeddings):
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
            if modality not in self.layout.modalities:
                raise ValueError(f"a head for {modality!r}, which is not among the modalities {sorted(self.layout.modalities)}")
            m = self.layout.modalities[modality]
            check_head(choice.name, m)
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
    def embed_tokens(self, name: str, values: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The one input path: values of modality `name` -> embeddings (..., D).

        "text" (or "ids"): shared ids (...) through the token table; a single-codebook modality:
        local codes (...) through the token table at its code range; multi-codebook: codes (..., Q)
        through its CodeEmbedding; continuous or next-scale: vectors (..., C) through its
        in-projection, with `scale` (...) the scale index of each vector (0 when None).
        """
        if name in ("text", "ids"):
            return self.token_embedding(values)  # (..., D)
        spec = self.layout.modalities[name]
        if spec.multi_codebook:
            return self.code_embeddings[name](values.reshape(-1, spec.num_codebooks)).view(*values.shape[:-1], -1)
        if spec.kind == "codes":
            return self.token_embedding(self.layout.code_ids(name, values))  # (..., D)
        if scale is None:
            scale = torch.zeros(values.shape[:-1], dtype=torch.long, device=values.device)  # (...)
        dtype = self.token_embedding.weight.dtype
        return self.in_projections[name](values.to(dtype), scale)  # (..., D)

    def embed(self, ids: torch.Tensor, vectors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """ids (B, T) + vectors {name: (flat index (N,), values (N, C) or codes (N, Q), scale (N,))} -> (B, T, D)."""
        x = self.embed_tokens("ids", ids)  # (B, T, D)
        if not vectors:
            return x
        flat = x.flatten(0, 1)  # (B*T, D)
        for name, (index, values, scale) in vectors.items():
            flat = flat.index_copy(0, index, self.embed_tokens(name, values, scale).to(flat.dtype))  # (B*T, D)
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
        model = cls(load_json(MMARConfig, config_path, partial=False))
        load_weights(model, directory / "model.safetensors")
        return model.eval()
