"""Byte-level text tokenizer: UTF-8 bytes are the codes (ByT5 / MEGABYTE style, no vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenizers_vq.base import Tokenizer, TokenizerLoss


@dataclass
class TextConfig:
    max_bytes: int = 256  # longest text accepted by `encode`


class Text(Tokenizer):
    """str <-> (n,) long tensor of UTF-8 bytes. Has no weights; saves only its config."""

    Config = TextConfig
    modality = "text"

    @property
    def codebook_size(self) -> int:
        return 256

    @property
    def num_codebooks(self) -> int:
        return 1

    def token_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return data_shape  # one code per byte

    def encode(self, data: str) -> torch.Tensor:
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"text is not valid Unicode ({error.reason}); pass UTF-8 text") from error
        if len(raw) > self.config.max_bytes:
            raise ValueError(f"text is {len(raw)} bytes, longer than the limit of {self.config.max_bytes}")
        return torch.tensor(list(raw), dtype=torch.long)  # (n,)

    def decode(self, tokens: torch.Tensor) -> str:
        return bytes(int(t) for t in tokens.tolist()).decode("utf-8", errors="replace")

    def training_loss(self, data, generator=None) -> TokenizerLoss:
        raise TypeError("the byte tokenizer has nothing to train")
