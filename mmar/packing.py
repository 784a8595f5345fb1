"""Segments -> one left-padded batch with block ids, 3-axis positions and per-head targets.

A sample is a list of `Segment`s, text first. `pack` owns all alignment:

- text and causal modality segments are shifted by one: the position before a token predicts it
  (`<m:name>` itself is predicted by the text head);
- a next-scale segment (VAR): the `<m:name>` position predicts scale 1, and scale k's input
  vectors (the tokenizer's teacher inputs) predict scale k's codes at the same positions; all
  positions of one scale share one block id, so attention inside a scale is full;
- multi-codebook codes (n, Q) are laid out in steps by the modality's pattern (`mmar/patterns.py`,
  holes are -100) at `<in:name>` positions, shifted by one like any causal segment;
- `</m:name>` closes every complete segment and is never a target;
- a segment whose `targets` is None only opens the modality (a generation prompt);
- `learn=False` makes a segment context only (no position predicts it: a caption task's media);
- `end=True` on a text segment closes the sample with `<eos>`, which the text head learns.

Block ids are column indices of the padded row (a scale shares its first column's id); padding
has PAD_BLOCK. Rows are left-padded so every prompt ends in the last column.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mmar import patterns
from mmar.layout import BOS, EOS, PAD, TokenLayout, grid_positions, scale_positions, segment_span
from mmar.transformer import PAD_BLOCK


class Segment(NamedTuple):
    modality: str  # "text" or a tokenizer name of the layout
    targets: torch.Tensor | None  # text: bytes (n,); codes (*token_shape); latents (..., C); scales: codes (L,)
    inputs: torch.Tensor | None = None  # scales only: teacher inputs (L - 1, C)
    learn: bool = True  # False: context only, no position predicts this segment
    end: bool = False  # text only: close the sample with <eos> (predicted by the text head)


class VectorInput(NamedTuple):
    index: torch.Tensor  # (N,) flat index into B*T
    values: torch.Tensor  # (N, C) float vectors, or (N, Q) long codes of a multi-codebook modality
    scale: torch.Tensor  # (N,) long: scale index of each vector (0 for causal vectors)


class HeadTarget(NamedTuple):
    index: torch.Tensor  # (N,) flat index into B*T of the predicting position
    target: torch.Tensor  # (N, *target_shape)


class Batch(NamedTuple):
    ids: torch.Tensor  # (B, T) long
    positions: torch.Tensor  # (B, T, 3) float
    block: torch.Tensor  # (B, T) long
    vectors: dict[str, VectorInput]
    targets: dict[str, HeadTarget]  # keyed by modality ("text" for the text head)

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda pair: type(pair)(*(t.to(device) for t in pair))  # noqa: E731
        return Batch(self.ids.to(device), self.positions.to(device), self.block.to(device),
                     {k: move(v) for k, v in self.vectors.items()}, {k: move(v) for k, v in self.targets.items()})


class _Row:
    """One sample being laid out: parallel lists, indices local to the unpadded row."""

    def __init__(self) -> None:
        self.ids: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.block: list[torch.Tensor] = []
        self.length = 0
        self.cursor = 0  # next text position
        self.vectors: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.targets: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def emit(self, ids: torch.Tensor, positions: torch.Tensor, block: torch.Tensor | None = None) -> torch.Tensor:
        """Append len(ids) columns; returns their local indices (n,)."""
        index = torch.arange(self.length, self.length + len(ids))  # (n,)
        self.ids.append(ids)
        self.positions.append(positions)
        self.block.append(index if block is None else block)
        self.length += len(ids)
        return index

    def emit_text(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.cursor, self.cursor + len(ids)).float()[:, None].expand(-1, 3)  # (n, 3)
        self.cursor += len(ids)
        return self.emit(ids, positions)

    def target(self, head: str, index: torch.Tensor, values: torch.Tensor, learn: bool = True) -> None:
        if learn:
            self.targets.setdefault(head, []).append((index, values))


def pack(samples: list[list[Segment]], layout: TokenLayout, length: int | None = None) -> Batch:
    """Lay out `samples` in one batch, left-padded to the longest (or to `length`)."""
    rows = [_layout_sample(sample, layout) for sample in samples]
    total = max(row.length for row in rows) if length is None else length
    if any(row.length > total for row in rows):
        raise ValueError(f"a sample of {max(r.length for r in rows)} positions does not fit in length {total}")
    batch = len(rows)
    ids = torch.full((batch, total), PAD, dtype=torch.long)  # (B, T)
    positions = torch.zeros(batch, total, 3)  # (B, T, 3)
    block = torch.full((batch, total), PAD_BLOCK, dtype=torch.long)  # (B, T)
    vectors: dict[str, list] = {}
    targets: dict[str, list] = {}
    for b, row in enumerate(rows):
        shift = total - row.length  # left padding
        ids[b, shift:] = torch.cat(row.ids)
        positions[b, shift:] = torch.cat(row.positions)
        block[b, shift:] = torch.cat(row.block) + shift
        flat = lambda local: b * total + shift + local  # noqa: E731
        for name, parts in row.vectors.items():
            vectors.setdefault(name, []).extend((flat(i), v, s) for i, v, s in parts)
        for name, parts in row.targets.items():
            targets.setdefault(name, []).extend((flat(i), t) for i, t in parts)
    join = lambda parts, k: torch.cat([p[k] for p in parts])  # noqa: E731
    return Batch(
        ids, positions, block,
        {n: VectorInput(join(p, 0), join(p, 1), join(p, 2)) for n, p in vectors.items()},
        {n: HeadTarget(join(p, 0), join(p, 1)) for n, p in targets.items()},
    )


def _layout_sample(sample: list[Segment], layout: TokenLayout) -> _Row:
    if not sample or sample[0].modality != "text":
        raise ValueError("a sample must start with a text segment (it may be empty)")
    row = _Row()
    row.emit_text(torch.tensor([BOS]))
    for segment in sample:
        if segment.modality == "text":
            ids = layout.text_ids(segment.targets.long())  # (n,)
            if segment.end:
                ids = torch.cat([ids, torch.tensor([EOS])])  # (n + 1,)
            index = row.emit_text(ids)
            row.target("text", index - 1, ids, segment.learn)
        elif segment.modality in layout.modalities:
            _layout_modality(row, segment, layout)
        else:
            raise ValueError(f"unknown modality {segment.modality!r}; the layout has {sorted(layout.modalities)}")
    return row


def _layout_modality(row: _Row, segment: Segment, layout: TokenLayout) -> None:
    spec = layout.modalities[segment.modality]
    name, learn = spec.name, segment.learn
    open_index = row.emit_text(torch.tensor([layout.open_id[name]]))
    row.target("text", open_index - 1, torch.tensor([layout.open_id[name]]), learn)
    if segment.targets is None:
        return  # only opened: generation continues from here
    start = torch.tensor([float(row.cursor)])  # (1,) the grid opens one past <m>
    n = spec.num_tokens
    if spec.kind == "scales":
        codes = segment.targets.reshape(-1)  # (L,)
        if len(codes) != n or segment.inputs is None or len(segment.inputs) != n - 1:
            raise ValueError(f"{name}: next-scale segment needs {n} codes and {n - 1} input vectors")
        row.target(name, open_index, codes[:1], learn)  # <m> predicts scale 1 (1x1)
        positions = scale_positions(spec.scales, spec.grid, start)[0, 1:]  # (L-1, 3)
        sizes = [h * w for h, w in spec.scales[1:]]
        scale_index = torch.repeat_interleave(torch.arange(1, len(spec.scales)), torch.tensor(sizes))  # (L-1,)
        first = row.length + torch.cumsum(torch.tensor([0] + sizes[:-1]), 0)  # (K-1,) first column of each scale
        block = torch.repeat_interleave(first, torch.tensor(sizes))  # (L-1,)
        index = row.emit(torch.full((n - 1,), layout.input_id[name]), positions, block)
        row.vectors.setdefault(name, []).append((index, segment.inputs, scale_index))
        row.target(name, index, codes[1:], learn)
    else:
        positions = grid_positions(spec.grid, start, n)[0]  # (n, 3)
        if spec.multi_codebook:
            codes = segment.targets.reshape(spec.num_cells, spec.num_codebooks)  # (cells, Q)
            steps = patterns.interleave(spec.pattern, codes)  # (n, Q) with -100 holes
            index = row.emit(torch.full((n,), layout.input_id[name]), positions)
            row.vectors.setdefault(name, []).append((index, steps, torch.zeros(n, dtype=torch.long)))
            row.target(name, index - 1, steps, learn)
        elif spec.kind == "codes":
            codes = segment.targets.reshape(n)  # (n,)
            index = row.emit(layout.code_ids(name, codes), positions)
            row.target(name, index - 1, codes, learn)
        else:
            latents = segment.targets.reshape(n, spec.latent_channels)  # (n, C)
            index = row.emit(torch.full((n,), layout.input_id[name]), positions)
            row.vectors.setdefault(name, []).append((index, latents, torch.zeros(n, dtype=torch.long)))
            row.target(name, index - 1, latents, learn)
    row.cursor += segment_span(spec)
    row.emit_text(torch.tensor([layout.close_id[name]]))


def unpack(batch: Batch, layout: TokenLayout) -> list[list[Segment]]:
    """Inverse of `pack` (up to `learn`): the segments of every row, bodies in the tokenizer's token_shape."""
    num_rows, total = batch.ids.shape
    dense_targets = {name: _dense(t.index, t.target, num_rows * total) for name, t in batch.targets.items()}
    dense_vectors = {name: _dense(v.index, v.values, num_rows * total) for name, v in batch.vectors.items()}
    samples = []
    for b in range(num_rows):
        ids = batch.ids[b].tolist()
        column = next(i for i, token in enumerate(ids) if token != PAD) + 1  # skip <bos>
        segments, text = [], []
        while column < total:
            token = ids[column]
            if token == EOS:
                segments.append(Segment("text", torch.tensor(text, dtype=torch.long), end=True))
                text, column = None, column + 1
                break
            name = layout.modality_of_open(token)
            if name is None:
                text.append(token - layout.byte_offset)
                column += 1
                continue
            segments.append(Segment("text", torch.tensor(text, dtype=torch.long)))
            text = []
            segment, column = _unpack_modality(layout.modalities[name], layout, batch.ids[b], b * total, column,
                                               dense_targets.get(name), dense_vectors.get(name))
            segments.append(segment)
        if text is not None and (text or not segments):
            segments.append(Segment("text", torch.tensor(text, dtype=torch.long)))
        samples.append(segments)
    return samples


def _dense(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    dense = torch.zeros((size, *values.shape[1:]), dtype=values.dtype)  # (B*T, ...)
    dense[index] = values
    return dense


def _unpack_modality(spec, layout, row_ids, row_start, open_column, targets, vectors):
    """-> (Segment, next column) for the modality opened at `open_column`."""
    shape = spec.output_shape
    first = open_column + 1
    if first >= len(row_ids) or row_ids[first] == layout.close_id[spec.name]:
        return Segment(spec.name, None), first
    n = spec.num_tokens - (1 if spec.kind == "scales" else 0)
    body = slice(row_start + first, row_start + first + n)
    if spec.kind == "scales":
        codes = torch.cat([targets[row_start + open_column: row_start + open_column + 1], targets[body]])  # (L,)
        segment = Segment(spec.name, codes, vectors[body])
    elif spec.multi_codebook:
        codes = patterns.deinterleave(spec.pattern, vectors[body], spec.num_cells)  # (cells, Q)
        segment = Segment(spec.name, codes.reshape(*shape, spec.num_codebooks))
    elif spec.kind == "codes":
        segment = Segment(spec.name, (row_ids[first:first + n] - layout.code_offset[spec.name]).reshape(shape))
    else:
        segment = Segment(spec.name, vectors[body].reshape(*shape, spec.latent_channels))
    return segment, first + n + 1  # past </m>
