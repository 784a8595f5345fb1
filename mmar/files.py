"""File integrity: SHA-256 manifests, so a truncated or altered file is caught on load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
