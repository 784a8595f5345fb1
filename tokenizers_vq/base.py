"""The tokenizer contract shared by every modality.

A tokenizer turns a batch of data into tokens and back:

- `encode(data) -> codes (B, *token_shape) long` for a discrete tokenizer, or
  `latents (B, *token_shape, C) float` for a continuous one (`codebook_size == 0`);
- `decode(codes_or_latents) -> data`.

It is an `nn.Module` with a `config` dataclass and saves as `config.json` + `model.safetensors`
(`save_pretrained` / `from_pretrained`), so the AR pipeline stores it as one subfolder.
Training goes through `training_loss(data, generator) -> TokenizerLoss`, so one trainer serves all.
Modelled on audiocraft's `CompressionModel` and diffusers' `ModelMixin` (ideas, not code).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from safetensors.torch import load_model, save_model
from torch import nn


class TokenizerLoss(NamedTuple):
    """What `training_loss` returns: the scalar to minimise, the reconstruction, and floats to log."""

    loss: torch.Tensor  # () scalar
    reconstruction: torch.Tensor  # same shape as the data
    metrics: dict[str, float]


class Tokenizer(nn.Module):
    """Base class: subclasses set `Config`, `modality`, and implement the abstract methods."""

    Config: ClassVar[type]
    modality: ClassVar[str]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    # --- the contract -----------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """Codes per level; 0 for a continuous tokenizer."""
        raise NotImplementedError

    @property
    def num_codebooks(self) -> int:
        """Codes per position (RVQ levels); 1 for a plain VQ, 0 for a continuous tokenizer."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        """C of the vectors this tokenizer feeds the transformer (latents or teacher inputs); 0 if none."""
        return 0

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Token grid for one item of `data_shape` (without batch), e.g. (3, 32, 32) -> (8, 8)."""
        raise NotImplementedError

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, data: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        raise NotImplementedError

    def forward(self, data: torch.Tensor, generator: torch.Generator | None = None) -> TokenizerLoss:
        """Training entry point (so DDP wrappers see a forward call): the training loss."""
        return self.training_loss(data, generator)

    @torch.no_grad()
    def calibrate(self, data: torch.Tensor) -> None:
        """Fit data-dependent constants after training (e.g. a latent scaling factor). Default: none."""

    # --- save / load (diffusers-style folder) --------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"class": type(self).registry_name(), **dataclasses.asdict(self.config)}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_model(self, str(directory / "model.safetensors"))

    @classmethod
    def registry_name(cls) -> str:
        return cls.__module__.rsplit(".", 1)[-1]

    @classmethod
    def data_settings(cls, data_shape: tuple[int, ...]) -> dict[str, Any]:
        """Config fields that follow from the training data's item shape, e.g. (3, 32, 32) -> {"image_size": 32}.

        Default: a Config field named `image_size` takes the item's last axis (the frame side), and
        nothing else; a tokenizer whose config must match its data in another way overrides this.
        """
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        return {"image_size": int(data_shape[-1])} if "image_size" in fields else {}

    @classmethod
    def from_config_dict(cls, values: dict[str, Any]) -> "Tokenizer":
        values = {k: v for k, v in values.items() if k != "class"}
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} config has unknown keys {unknown}")
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        # JSON turns tuples into lists; give tuples back where the default is a tuple.
        for key, value in values.items():
            default = fields[key].default
            if isinstance(value, list) and isinstance(default, tuple):
                values[key] = tuple(value)
        return cls(cls.Config(**values))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load any registered tokenizer from its folder; a clear error if anything is missing or corrupt."""
    from tokenizers_vq import TOKENIZERS

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not config_path.is_file():
        raise FileNotFoundError(f"no tokenizer config at {config_path}: is this a tokenizer folder?")
    try:
        values = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}); re-save the tokenizer") from error
    name = values.get("class")
    if name not in TOKENIZERS:
        raise ValueError(f"{config_path}: unknown tokenizer class {name!r}; known: {sorted(TOKENIZERS)}")
    tokenizer = TOKENIZERS[name].from_config_dict(values)
    load_weights(tokenizer, weights_path)
    return tokenizer.eval()


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load `model.safetensors` into `module` strictly; a one-line error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing weights {path}; the folder is incomplete (re-save or re-train it)")
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except Exception as error:  # safetensors raises several types for truncated/altered files
        raise ValueError(f"cannot read {path} ({error}); the file is truncated or corrupt") from error
    if missing or unexpected:
        raise ValueError(f"{path} does not match {type(module).__name__}: missing {missing}, unexpected {unexpected}")
