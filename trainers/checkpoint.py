"""Crash-safe training checkpoints (resumable state, kept apart from the model-only export).

A checkpoint is a folder `step-000123/` with model / EMA / optimiser tensors as safetensors, the
trainer state as JSON and `manifest.json` holding every file's SHA-256. It is written into a
temporary folder, flushed, then renamed into place (atomic on one filesystem); older checkpoints
are pruned only after the new one is committed, so a kill at any moment leaves the previous one
loadable; pruning first renames a folder aside (`.old-step-*`), so a kill while deleting never
leaves a half-deleted `step-*`. A failed save (a full disk) removes its temporary folder and
leaves the earlier checkpoints as they were. Loading verifies the hashes and the contents and
falls back to the previous checkpoint on any error, with one warning line. No pickle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from mmar.config import read_json
from mmar.files import check_finite, verify_manifest, write_manifest

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
    try:
        temporary.mkdir()
        optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(temporary / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(temporary / "ema.safetensors"))
        save_file({k: v.cpu() for k, v in optimizer_tensors.items()}, str(temporary / "optimizer.safetensors"))
        (temporary / "optimizer.json").write_text(json.dumps(optimizer_meta))
        (temporary / "trainer.json").write_text(json.dumps({"step": step, **trainer}, indent=2))
        write_manifest(temporary, ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
                                   "trainer.json"])
        _fsync_tree(temporary)
        if final.exists():  # re-saving the same step: move the old one aside first, never leave a gap
            _remove(final)
        os.replace(temporary, final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        _remove(old)
    for leftover in root.glob(f".old-{PREFIX}*"):  # a prune killed half-way
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _remove(directory: Path) -> None:
    """Rename aside, then delete: a kill in between leaves `.old-step-*`, never a half-deleted `step-*`."""
    aside = directory.with_name(f".old-{directory.name}")
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(directory, aside)
    shutil.rmtree(aside, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_latest(root: Path, restore: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint under `root` that loads, as tensors + state, or None if there is none.

    `restore(state)` (loading it into the run) is part of the attempt: a checkpoint whose files
    verify but whose contents do not fit (a manifest matching damaged weights, a hand-edited
    trainer.json) is skipped like a damaged one, with one warning line, for the previous one.
    """
    for directory in reversed(list_checkpoints(root)):
        try:
            state = _load(directory)
            if restore is not None:
                state["restored"] = restore(state)
            return state
        except Exception as error:  # noqa: BLE001 - any failure means: try the previous checkpoint
            logger.warning("skipping checkpoint %s (%s: %s); trying the previous one", directory,
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    return None


def _load(directory: Path) -> dict[str, Any]:
    verify_manifest(directory)
    optimizer = _unflatten_optimizer(load_file(str(directory / "optimizer.safetensors")),
                                     read_json(directory / "optimizer.json"))
    state = {"path": directory, "model": load_file(str(directory / "model.safetensors")),
             "ema": load_file(str(directory / "ema.safetensors")), "optimizer": optimizer,
             "trainer": read_json(directory / "trainer.json")}
    for name in ("model", "ema"):
        check_finite(state[name], f"{directory}/{name}.safetensors")
    return state
