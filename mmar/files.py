"""File integrity: SHA-256 manifests, so a truncated or altered file is caught on load."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers_vq.base import file_sha256


def sha256(path: Path) -> str:
    return file_sha256(path)  # the tokenizer folders' hash, so every manifest in mmar agrees


def file_hashes(directory: Path, files: list[str]) -> dict[str, str]:
    return {name: sha256(directory / name) for name in files}


def verify_hashes(directory: Path, hashes: dict[str, str]) -> None:
    """Raise FileNotFoundError / ValueError naming the first missing or altered file."""
    for name, digest in hashes.items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; the folder is incomplete")
        if sha256(path) != digest:
            raise ValueError(f"{path} does not match its recorded hash: the file is truncated or altered")


def write_manifest(directory: Path, files: list[str]) -> None:
    (directory / "manifest.json").write_text(json.dumps(file_hashes(directory, files), indent=2) + "\n")


def verify_manifest(directory: Path) -> None:
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{directory} has no manifest.json; it is incomplete")
    verify_hashes(directory, json.loads(manifest_path.read_text()))


def check_finite(tensors: dict[str, "torch.Tensor"], where: str) -> None:
    """Raise ValueError naming the first tensor holding NaN or infinity (a diverged model is never saved or used)."""
    import torch

    for name, tensor in tensors.items():
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where} has non-finite values in {name!r}: the run diverged; resume from an "
                             "earlier checkpoint with a lower learning rate")
