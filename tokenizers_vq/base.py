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

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar, Iterator, NamedTuple

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
        """Write `config.json`, `model.safetensors` and `manifest.json` (their SHA-256) atomically:
        into a temporary folder beside `directory`, then renamed into place."""
        with atomic_folder(directory) as temporary:
            config = {"class": type(self).registry_name(), **dataclasses.asdict(self.config)}
            (temporary / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_model(self, str(temporary / "model.safetensors"))
            hashes = {name: file_sha256(temporary / name) for name in ("config.json", "model.safetensors")}
            (temporary / MANIFEST).write_text(json.dumps(hashes, indent=2) + "\n")

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
        """Build from a config dict (JSON types): unknown keys and values of the wrong type are errors."""
        values = {k: v for k, v in values.items() if k != "class"}
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__} config has unknown keys {unknown}")
        return cls(cls.Config(**{key: _typed(value, fields[key].default, key) for key, value in values.items()}))


MANIFEST = "manifest.json"


def _typed(value: Any, default: Any, key: str) -> Any:
    """`value` checked against the type of the field's default; JSON lists become tuples where the default is one."""
    if isinstance(default, bool) or isinstance(default, str):
        ok = type(value) is type(default)
    elif isinstance(default, int):
        ok = type(value) is int
    elif isinstance(default, float):
        ok = type(value) in (int, float) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple))
        if ok:  # each entry typed like the default's first (a tuple default is never mixed)
            value = tuple(_typed(v, default[0], key) for v in value) if default else tuple(value)
    else:
        ok = True
    if not ok:
        raise ValueError(f"config key {key!r} expects {type(default).__name__} like {default!r}, got {value!r}")
    return value


@contextlib.contextmanager
def atomic_folder(directory: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `directory` to write into; when the block ends without
    an error it replaces `directory` in one rename, otherwise it is removed and `directory` is untouched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        yield temporary
        if directory.exists():
            shutil.rmtree(directory)
        temporary.replace(directory)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load any registered tokenizer from its folder: the manifest's hashes are checked first, then
    the config's keys and types; every error is one line naming the file and what to do."""
    from tokenizers_vq import TOKENIZERS

    directory = Path(directory)
    config_path, weights_path, manifest_path = (directory / "config.json", directory / "model.safetensors",
                                                directory / MANIFEST)
    if not config_path.is_file():
        raise FileNotFoundError(f"no tokenizer config at {config_path}: is this a tokenizer folder?")
    if not manifest_path.is_file():
        raise ValueError(f"{directory} has no {MANIFEST}: it is incomplete or was written by an older mmar; "
                         "re-train or re-save the tokenizer")
    hashes = _read_json(manifest_path)
    if not isinstance(hashes, dict) or set(hashes) != {"config.json", "model.safetensors"} \
            or not all(isinstance(v, str) for v in hashes.values()):
        raise ValueError(f"{manifest_path} must map config.json and model.safetensors to their SHA-256")
    for name, digest in hashes.items():
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing; the tokenizer folder is incomplete")
        if file_sha256(directory / name) != digest:
            raise ValueError(f"{directory / name} does not match its recorded hash: the file is truncated or altered")
    values = _read_json(config_path)
    if not isinstance(values, dict):
        raise ValueError(f"{config_path} must hold a JSON object, not {type(values).__name__}")
    name = values.get("class")
    if name not in TOKENIZERS:
        raise ValueError(f"{config_path}: unknown tokenizer class {name!r}; known: {sorted(TOKENIZERS)}")
    try:
        tokenizer = TOKENIZERS[name].from_config_dict(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{config_path}: {error}") from error
    load_weights(tokenizer, weights_path)
    return tokenizer.eval()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-save the tokenizer") from error


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
