"""File integrity: SHA-256 manifests, so a truncated or altered file is caught on load."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from tokenizers_vq.base import atomic_folder, file_sha256

logger = logging.getLogger(__name__)


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


# --- a self-trained model's folder: config.json + model.safetensors + report.json + manifest.json ----
MODEL_FILES = ("config.json", "model.safetensors", "report.json")


def save_model_folder(module: "torch.nn.Module", config: Any, report: dict[str, Any], directory: str | Path,
                      what: str) -> Path:
    """Write the config, the weights, `report` and manifest.json (their SHA-256) into a temporary
    folder beside `directory`, then rename it into place. Non-finite weights are refused (`what` names
    the model in the message)."""
    from safetensors.torch import save_model

    from mmar.config import save_json

    check_finite(module.state_dict(), what)
    with atomic_folder(directory) as temporary:
        save_json(config, temporary / "config.json")
        save_model(module, str(temporary / "model.safetensors"))
        (temporary / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_manifest(temporary, list(MODEL_FILES))
    return Path(directory)


def load_model_folder(build: Callable[[Any], "torch.nn.Module"], config_type: type, directory: str | Path):
    """(module in eval mode, report) from a `save_model_folder` folder: hashes checked first, then the
    config's keys and limits, then finite weights. FileNotFoundError / ValueError name what is wrong."""
    from mmar.config import load_json, read_json
    from tokenizers_vq.base import load_weights

    directory = Path(directory)
    hashes = read_json(directory / "manifest.json")
    if not isinstance(hashes, dict) or sorted(hashes) != sorted(MODEL_FILES) \
            or not all(isinstance(digest, str) for digest in hashes.values()):
        raise ValueError(f"{directory / 'manifest.json'} must map {', '.join(MODEL_FILES)} to their SHA-256")
    verify_hashes(directory, hashes)
    module = build(load_json(config_type, directory / "config.json", partial=False))
    load_weights(module, directory / "model.safetensors")
    check_finite(module.state_dict(), str(directory / "model.safetensors"))
    report = read_json(directory / "report.json")
    if not isinstance(report, dict):
        raise ValueError(f"{directory / 'report.json'} must hold a JSON object")
    return module.eval(), report


def load_or_train_folder(directory: Path, key: str, load: Callable[[Path], tuple], train: Callable[[], tuple],
                         what: str) -> tuple:
    """A cached (module, report) from `directory` when it loads and records the identity `key`;
    otherwise (missing, unusable: logged in one line) `train()`, saved there with the identity."""
    if directory.exists():
        try:
            module, report = load(directory)
            if report.get("identity") != key:
                raise ValueError(f"{directory / 'report.json'} records another identity")
            return module, report
        except (OSError, ValueError) as error:
            logger.warning("retraining the %s: the cached one is unusable (%s)", what, error)
    module, report = train()
    report = {**report, "identity": key}
    module.save(directory, report)
    return module, report
