"""Codebook interleaving patterns: how the Q levels of residual-VQ codes are laid out in time.

The idea is MusicGen's (Copet et al. 2023, "Simple and Controllable Music Generation",
https://arxiv.org/abs/2306.05284, section 2.2); the code here is our own.

Codes of one item are a (n, Q) long tensor: n positions in raster order of a (t, h, w) grid, Q
codebook levels. A pattern turns them into (steps, Q): the model emits one row per step, all Q
levels of a row in parallel from one hidden state. Slots that hold no code are `IGNORE` (holes).

- "flat": frame-major, one level per step, steps = n * Q; step i * Q + q holds level q of
  position i (the other slots of its row are holes). Every code is conditioned on every code
  before it (MusicGen's "flattening"), at Q times the steps.
- "delay": level q is shifted q steps later, steps = n + Q - 1. When level q of position i is
  sampled (step i + q), levels < q of position i were sampled at earlier steps, so the model can
  condition on them (MusicGen's delay).
- "parallel": steps = n; step s holds every level of position s, sampled independently of each
  other (MusicGen's baseline; cheapest, weakest).

For Q = 1 the three are the same.

Every function accepts (n, Q) or (..., n, Q): leading (batch) dimensions are kept as they are.
"""

from __future__ import annotations

from typing import Protocol

import torch

IGNORE = -100


class Pattern(Protocol):
    def num_steps(self, n: int, num_levels: int) -> int: ...
    def interleave(self, codes: torch.Tensor) -> torch.Tensor: ...
    def deinterleave(self, stepped: torch.Tensor, n: int) -> torch.Tensor: ...
    def hole_mask(self, n: int, num_levels: int) -> torch.Tensor: ...


def _check_codes(codes: torch.Tensor) -> None:
    if codes.dim() < 2 or codes.shape[-2] < 1 or codes.shape[-1] < 1:
        raise ValueError(f"codes must be (n, Q) or (B, n, Q) with n, Q >= 1, got shape {tuple(codes.shape)}")


def _check_stepped(pattern: Pattern, stepped: torch.Tensor, n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if stepped.dim() < 2 or stepped.shape[-1] < 1:
        raise ValueError(f"stepped must be (steps, Q) or (B, steps, Q), got shape {tuple(stepped.shape)}")
    expected = pattern.num_steps(n, stepped.shape[-1])
    if stepped.shape[-2] != expected:
        raise ValueError(f"stepped must have {expected} steps for n={n}, got shape {tuple(stepped.shape)}")


class Parallel:
    """Identity: step s holds all Q levels of position s."""

    def num_steps(self, n: int, num_levels: int) -> int:
        return n

    def interleave(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., n, Q) -> (..., n, Q)"""
        _check_codes(codes)
        return codes.clone()  # (..., n, Q)

    def deinterleave(self, stepped: torch.Tensor, n: int) -> torch.Tensor:
        """(..., n, Q) -> (..., n, Q)"""
        _check_stepped(self, stepped, n)
        return stepped.clone()  # (..., n, Q)

    def hole_mask(self, n: int, num_levels: int) -> torch.Tensor:
        """(n, Q) bool, all False: parallel has no holes."""
        return torch.zeros(n, num_levels, dtype=torch.bool)  # (n, Q)


class Flat:
    """Frame-major: stepped[i * Q + q, q] = codes[i, q]; every other slot is IGNORE."""

    def num_steps(self, n: int, num_levels: int) -> int:
        return n * num_levels

    def hole_mask(self, n: int, num_levels: int) -> torch.Tensor:
        """(n * Q, Q) bool, True at holes: all but one slot of every row."""
        eye = torch.eye(num_levels, dtype=torch.bool)  # (Q, Q): row q keeps level q
        return ~eye.repeat(n, 1)  # (n * Q, Q)

    def interleave(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., n, Q) -> (..., n * Q, Q), holes IGNORE."""
        _check_codes(codes)
        n, num_levels = codes.shape[-2:]
        eye = torch.eye(num_levels, dtype=torch.bool, device=codes.device)  # (Q, Q)
        spread = codes[..., :, None, :].expand(*codes.shape[:-1], num_levels, num_levels)  # (..., n, Q, Q)
        stepped = spread.masked_fill(~eye, IGNORE)  # (..., n, Q, Q): [i, q, q] = codes[i, q]
        return stepped.reshape(*codes.shape[:-2], n * num_levels, num_levels)  # (..., n * Q, Q)

    def deinterleave(self, stepped: torch.Tensor, n: int) -> torch.Tensor:
        """(..., n * Q, Q) -> (..., n, Q); holes are never read."""
        _check_stepped(self, stepped, n)
        num_levels = stepped.shape[-1]
        grouped = stepped.reshape(*stepped.shape[:-2], n, num_levels, num_levels)  # (..., n, Q, Q)
        return torch.diagonal(grouped, dim1=-2, dim2=-1).clone()  # (..., n, Q)


class Delay:
    """Level q delayed by q steps: stepped[s, q] = codes[s - q, q], IGNORE outside 0 <= s - q < n."""

    def num_steps(self, n: int, num_levels: int) -> int:
        return n + num_levels - 1

    def _sources(self, n: int, num_levels: int) -> torch.Tensor:
        """(steps, Q): the position each slot reads from; out of [0, n) where the slot is a hole."""
        steps = torch.arange(self.num_steps(n, num_levels))  # (S,)
        return steps[:, None] - torch.arange(num_levels)[None, :]  # (S, Q)

    def hole_mask(self, n: int, num_levels: int) -> torch.Tensor:
        """(steps, Q) bool, True at holes: Q * (Q - 1) of them."""
        sources = self._sources(n, num_levels)  # (S, Q)
        return (sources < 0) | (sources >= n)  # (S, Q)

    def interleave(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., n, Q) -> (..., n + Q - 1, Q), holes IGNORE."""
        _check_codes(codes)
        n, num_levels = codes.shape[-2:]
        sources = self._sources(n, num_levels).to(codes.device)  # (S, Q)
        holes = (sources < 0) | (sources >= n)  # (S, Q)
        # holes read a clamped in-range position and are then overwritten
        index = sources.clamp(0, n - 1).expand(*codes.shape[:-2], -1, -1)  # (..., S, Q)
        stepped = torch.gather(codes, -2, index)  # (..., S, Q)
        return stepped.masked_fill(holes, IGNORE)  # (..., S, Q)

    def deinterleave(self, stepped: torch.Tensor, n: int) -> torch.Tensor:
        """(..., n + Q - 1, Q) -> (..., n, Q); holes are never read."""
        _check_stepped(self, stepped, n)
        positions = torch.arange(n, device=stepped.device)  # (n,)
        levels = torch.arange(stepped.shape[-1], device=stepped.device)  # (Q,)
        index = positions[:, None] + levels[None, :]  # (n, Q): codes[i, q] sits at step i + q
        return torch.gather(stepped, -2, index.expand(*stepped.shape[:-2], -1, -1))  # (..., n, Q)


PATTERNS: dict[str, Pattern] = {"flat": Flat(), "delay": Delay(), "parallel": Parallel()}


def _pattern(name: str) -> Pattern:
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; known: {sorted(PATTERNS)}")
    return PATTERNS[name]


def num_steps(name: str, n: int, num_levels: int) -> int:
    """How many generation steps pattern `name` takes for n positions of Q levels."""
    return _pattern(name).num_steps(n, num_levels)


def interleave(name: str, codes: torch.Tensor) -> torch.Tensor:
    """(..., n, Q) codes -> (..., steps, Q) in pattern `name`, holes IGNORE."""
    return _pattern(name).interleave(codes)


def deinterleave(name: str, stepped: torch.Tensor, n: int) -> torch.Tensor:
    """(..., steps, Q) -> (..., n, Q): the exact inverse of `interleave`."""
    return _pattern(name).deinterleave(stepped, n)


def hole_mask(name: str, n: int, num_levels: int) -> torch.Tensor:
    """(steps, Q) bool, True where pattern `name` leaves a hole."""
    return _pattern(name).hole_mask(n, num_levels)
