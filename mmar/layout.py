"""The shared id space and the position layout of every modality.

Ids, in order: special tokens (pad, bos, eos), per modality `<m:name>`, `</m:name>` and
`<in:name>` (a vector-fed position), the 256 text bytes, then one disjoint code range per
single-codebook discrete modality. Text and specials come first, so the text head's local
targets are simply the shared ids below `text_vocab_size`. Multi-codebook codes (RVQ, Q > 1) sit
at `<in:name>` positions and enter through the model's per-level `CodeEmbedding`, laid out in
time by the modality's codebook pattern (`mmar/patterns.py`), so they need no id range.

Positions are 3-axis (t, row, col), the only position signal (M-RoPE): text at p is (p, p, p); a
grid that opens at p0 is (p0 + t, p0 + row, p0 + col); a next-scale scale places its cells at the
centres of the final grid they cover (row and column scaled to the final grid).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from mmar import patterns

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class ModalitySpec:
    """What the token stream must know about one tokenizer (derived from it, saved with the model)."""

    name: str  # key of the tokenizer in the pipeline, e.g. "image"
    codebook_size: int  # 0 for a continuous tokenizer
    num_codebooks: int  # levels per position (0 for continuous)
    latent_channels: int  # C of vector inputs (teacher inputs or latents); 0 when fed by ids
    grid: tuple[int, int, int]  # (t, h, w) of the final token grid
    scales: tuple[tuple[int, int], ...] = field(default=())  # next-scale schedule, first (1, 1)
    pattern: str = "flat"  # codebook pattern of multi-codebook codes (mmar/patterns.py)
    token_shape: tuple[int, ...] = ()  # the tokenizer's own token_shape (what generation returns)
    data_shape: tuple[int, ...] = ()  # one item of media the tokenizer reads, e.g. (3, 32, 32)
    medium: str = "image"  # what decoded items are (the tokenizer's `modality`): picks the output writer

    def __post_init__(self) -> None:
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"{self.name}: grid must be (t, h, w) with every axis >= 1, got {self.grid}")
        patterns.num_steps(self.pattern, 1, 1)  # an unknown pattern is an error here

    @property
    def kind(self) -> str:
        """What the head predicts: 'scales' (next-scale), 'vectors' (continuous) or 'codes' (discrete, causal)."""
        if self.scales:
            return "scales"
        return "vectors" if self.codebook_size == 0 else "codes"

    @property
    def multi_codebook(self) -> bool:
        """Codes with Q > 1 levels per position: fed as (n, Q) through a CodeEmbedding, in pattern order."""
        return self.kind == "codes" and self.num_codebooks > 1

    @property
    def num_cells(self) -> int:
        """Cells of the final (t, h, w) grid."""
        t, h, w = self.grid
        return t * h * w

    @property
    def num_tokens(self) -> int:
        """Positions of the segment body (pattern steps for multi-codebook codes)."""
        if self.scales:
            return sum(h * w for h, w in self.scales)
        if self.multi_codebook:
            return patterns.num_steps(self.pattern, self.num_cells, self.num_codebooks)
        return self.num_cells

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one generated item: the tokenizer's token_shape.

        Specs saved before token_shape was recorded were all images: their (h, w)."""
        if self.scales:
            return (self.num_tokens,)
        return tuple(self.token_shape) if self.token_shape else tuple(self.grid[1:])


class TokenLayout:
    def __init__(self, modalities: list[ModalitySpec]) -> None:
        self.modalities = {spec.name: spec for spec in modalities}
        if "text" in self.modalities:
            raise ValueError("'text' is built in; do not list it among the modalities")
        self.open_id, self.close_id, self.input_id = {}, {}, {}
        next_id = len(SPECIALS)
        for name in self.modalities:
            self.open_id[name], self.close_id[name], self.input_id[name] = next_id, next_id + 1, next_id + 2
            next_id += 3
        self.byte_offset = next_id
        self.text_vocab_size = next_id + 256
        self.code_offset = {}
        next_id = self.text_vocab_size
        for name, spec in self.modalities.items():
            if spec.kind == "codes" and not spec.multi_codebook:
                self.code_offset[name] = next_id
                next_id += spec.codebook_size * spec.num_codebooks
        self.vocab_size = next_id
        self.open_ids = torch.tensor(list(self.open_id.values()), dtype=torch.long)  # (M,)

    def text_ids(self, byte_codes: torch.Tensor) -> torch.Tensor:
        return byte_codes + self.byte_offset

    def code_ids(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        """Local codes (..., ) of a single-level modality -> shared ids."""
        return codes + self.code_offset[name]

    def modality_of_open(self, token_id: int) -> str | None:
        return next((name for name, i in self.open_id.items() if i == token_id), None)


def grid_positions(grid: tuple[int, int, int], start: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
    """Positions of a (t, h, w) grid in raster order opening at `start` (B,) -> (B, num_steps, 3) float.

    `num_steps` beyond the t*h*w cells (a delay pattern's tail) continue the time axis past the last cell.
    """
    t, h, w = grid
    axes = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    offsets = torch.stack([a.reshape(-1) for a in axes], dim=-1).float()  # (n, 3)
    extra = (num_steps or len(offsets)) - len(offsets)
    if extra > 0:
        tail = offsets[-1] + torch.arange(1, extra + 1).float()[:, None] * torch.tensor([1.0, 0.0, 0.0])  # (extra, 3)
        offsets = torch.cat([offsets, tail])  # (num_steps, 3)
    return start.view(-1, 1, 1).float() + offsets.to(start.device)  # (B, num_steps, 3)


def scale_positions(scales: tuple[tuple[int, int], ...], grid: tuple[int, int, int], start: torch.Tensor) -> torch.Tensor:
    """Positions of every scale's cells, scaled to the final grid, opening at `start` (B,) -> (B, sum h*w, 3)."""
    return start.view(-1, 1, 1).float() + _scale_offsets(tuple(map(tuple, scales)), tuple(grid)).to(start.device)


@functools.lru_cache(maxsize=64)
def _scale_offsets(scales: tuple[tuple[int, int], ...], grid: tuple[int, int, int]) -> torch.Tensor:
    """`scale_positions` from 0 (L, 3), built once per layout (~0.25 ms a generation otherwise);
    an ordinary tensor even when first asked for in inference mode, since training reuses it."""
    _, height, width = grid
    pieces = []
    with torch.inference_mode(False):
        for h, w in scales:
            rows = (torch.arange(h, dtype=torch.float32) + 0.5) * height / h - 0.5  # (h,) centre in final-grid units
            cols = (torch.arange(w, dtype=torch.float32) + 0.5) * width / w - 0.5  # (w,)
            r, c = torch.meshgrid(rows, cols, indexing="ij")
            pieces.append(torch.stack([torch.zeros(h * w), r.reshape(-1), c.reshape(-1)], dim=-1))  # (h*w, 3)
        return torch.cat(pieces)  # (L, 3)


def segment_span(spec: ModalitySpec) -> int:
    """How far the text position advances over a segment's body (M-RoPE: the largest axis extent)."""
    return max(spec.grid) + spec.num_tokens - spec.num_cells if spec.multi_codebook else max(spec.grid)
