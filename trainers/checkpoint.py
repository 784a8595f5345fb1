"""Crash-safe training checkpoints (resumable state, kept apart from the model-only export).

A checkpoint is a folder `step-000123/` with model / EMA / optimiser tensors as safetensors, the
trainer state as JSON and `manifest.json` holding every file's SHA-256. It is written into a
temporary folder, flushed, then renamed into place (atomic on one filesystem); older checkpoints
are pruned only after the new one is committed, so a kill at any moment leaves the previous one
loadable. Loading verifies the hashes and falls back to the newest intact checkpoint. No pickle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmar.files import verify_manifest, write_manifest

logger = logging.getLogger(__name__)
PREFIX = "step-"


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"{index}.{key}": value.contiguous() for index, entry in state["state"].items()
               for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, step: int, *, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], trainer: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` under `root` atomically, then prune to the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    temporary = root / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(temporary / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(temporary / "ema.safetensors"))
    save_file({k: v.cpu() for k, v in optimizer_tensors.items()}, str(temporary / "optimizer.safetensors"))
    (temporary / "optimizer.json").write_text(json.dumps(optimizer_meta))
    (temporary / "trainer.json").write_text(json.dumps({"step": step, **trainer}, indent=2))
    write_manifest(temporary, ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json"])
    _fsync_tree(temporary)
    if final.exists():  # re-saving the same step: move the old one aside first, never leave a gap
        shutil.rmtree(final)
    os.replace(temporary, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_latest(root: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint under `root` as tensors + state, or None if there is none."""
    for directory in reversed(list_checkpoints(root)):
        try:
            verify_manifest(directory)
        except ValueError as error:
            logger.warning("skipping damaged checkpoint %s: %s", directory.name, error)
            continue
        optimizer = _unflatten_optimizer(load_file(str(directory / "optimizer.safetensors")),
                                         json.loads((directory / "optimizer.json").read_text()))
        return {
            "path": directory,
            "model": load_file(str(directory / "model.safetensors")),
            "ema": load_file(str(directory / "ema.safetensors")),
            "optimizer": optimizer,
            "trainer": json.loads((directory / "trainer.json").read_text()),
        }
    return None
