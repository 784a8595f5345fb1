"""Pre-tokenized datasets: encode a captioned source once with a frozen tokenizer, store safetensors shards.

Layout of a tokens folder: `shard-00000.safetensors` ... (tensor "tokens", captions as JSON in the
file's metadata) and `index.json`, written last: a folder without it is incomplete and is rebuilt.
The whole folder is written under a temporary name and renamed into place.

Tokens are cached by identity: `index.json` records what made them (the SHA-256 of the
tokenizer's weights and the data config); `stale_reason` compares that with the current run, and a
mismatch means re-encode, never training on stale codes. It also records every shard's SHA-256, so
a damaged shard is found before training and re-encoded too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mmar.config import read_json
from mmar.files import file_hashes, sha256, verify_hashes


@torch.no_grad()
def encode_dataset(tokenizer, dataset, directory: str | Path, *, batch_size: int = 256, shard_size: int = 16384,
                   device: torch.device | str = "cpu", progress: bool = True, identity: dict | None = None) -> Path:
    """Encode every (media, caption) of `dataset` -> tokens folder at `directory` (returned).

    `identity` (JSON-able, e.g. from `tokens_identity`) is recorded in index.json."""
    directory = Path(directory)
    temporary = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        tokenizer = tokenizer.to(device).eval()
        shards, tokens, captions, count = [], [], [], 0

        def flush() -> None:
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({"tokens": torch.cat(tokens).contiguous()}, str(temporary / name), metadata={"captions": json.dumps(captions)})
            shards.append(name)
            tokens.clear()
            captions.clear()

        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=lambda items: items)
        for items in tqdm(loader, desc=f"encoding {directory.name}", unit="batch", disable=not progress):
            media = torch.stack([item for item, _ in items]).to(device)  # (B, *data_shape)
            tokens.append(tokenizer.encode(media).cpu())  # (B, *token_shape[, C])
            captions.extend(caption for _, caption in items)
            count += len(items)
            if sum(len(t) for t in tokens) >= shard_size:
                flush()
        if tokens:
            flush()
        if count == 0:
            raise ValueError("the data source is empty: nothing to encode")
        index = {"num_items": count, "shards": shards, "identity": identity or {},
                 "sha256": file_hashes(temporary, shards)}
        (temporary / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        temporary.replace(directory)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # a failed encode (a full disk) leaves nothing behind
    return directory


def _read_index(directory: Path) -> dict:
    """index.json, checked: a dict with num_items, shards and their hashes (ValueError saying what is wrong)."""
    index = read_json(directory / "index.json")
    if not (isinstance(index, dict) and isinstance(index.get("num_items"), int) and isinstance(index.get("shards"), list)
            and isinstance(index.get("sha256"), dict) and set(index["sha256"]) == set(index["shards"])):
        raise ValueError(f"{directory / 'index.json'} lacks num_items, shards or their sha256")
    return index


def tokens_identity(tokenizer_dir: str | Path, data: dict) -> dict:
    """What a tokens folder depends on: the tokenizer's weights (SHA-256) and the data config."""
    return {"tokenizer_sha256": sha256(Path(tokenizer_dir) / "model.safetensors"), "data": data}


def stale_reason(directory: str | Path, identity: dict) -> str | None:
    """None when `directory` holds complete tokens made by `identity`; else why it must be (re-)encoded."""
    index_path = Path(directory) / "index.json"
    if not index_path.is_file():
        return "no complete tokens yet"
    try:
        index = _read_index(Path(directory))
        verify_hashes(Path(directory), index["sha256"])
    except (OSError, ValueError) as error:
        return f"it is damaged ({error})"
    recorded = index.get("identity", {})
    if not isinstance(recorded, dict):
        return "its index.json records no identity"
    if recorded.get("tokenizer_sha256") != identity["tokenizer_sha256"]:
        return "the tokenizer's weights changed since they were encoded"
    if recorded.get("data") != identity["data"]:
        return f"the data config changed ({recorded.get('data')} -> {identity['data']})"
    return None


class TokenizedDataset(torch.utils.data.Dataset):
    """All shards of a tokens folder in memory: item i -> (tokens (*token_shape[, C]), caption)."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        index_path = directory / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{directory} is not a complete tokens folder (no index.json); re-encode it")
        index = _read_index(directory)
        tokens, self.captions = [], []
        for name in index["shards"]:
            with safe_open(str(directory / name), framework="pt") as handle:
                tokens.append(handle.get_tensor("tokens"))
                self.captions.extend(json.loads(handle.metadata()["captions"]))
        self.tokens = torch.cat(tokens)  # (N, *token_shape[, C])
        if len(self.tokens) != index["num_items"] or len(self.captions) != len(self.tokens):
            raise ValueError(f"{directory}: shards hold {len(self.tokens)} items, index says {index['num_items']}; re-encode")

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, indices: torch.Tensor) -> "TokenizedDataset":
        """The items at `indices` (N',), in that order, as a dataset of their own (a training split)."""
        part = object.__new__(TokenizedDataset)
        part.tokens, part.captions = self.tokens[indices], [self.captions[i] for i in indices.tolist()]
        return part

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.tokens[index], self.captions[index]
