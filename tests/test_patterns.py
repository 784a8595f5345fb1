"""Codebook interleaving patterns: round trips, holes, causality of delay, and bad input."""

import pytest
import torch

from mmar.patterns import IGNORE, PATTERNS, deinterleave, hole_mask, interleave, num_steps


def _codes(n: int, num_levels: int, batch: int | None = None) -> torch.Tensor:
    """Unique codes: codes[i, q] = i * Q + q (offset per batch item), so a value locates its slot."""
    codes = torch.arange(n * num_levels).view(n, num_levels)  # (n, Q)
    if batch is None:
        return codes
    offsets = torch.arange(batch)[:, None, None] * n * num_levels  # (B, 1, 1)
    return codes[None] + offsets  # (B, n, Q)


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("num_levels", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 5, 16])
@pytest.mark.parametrize("batch", [None, 3])
def test_round_trip(name, num_levels, n, batch):
    codes = _codes(n, num_levels, batch)  # (n, Q) or (B, n, Q)
    stepped = interleave(name, codes)  # (..., steps, Q)
    leading = () if batch is None else (batch,)
    assert stepped.shape == (*leading, num_steps(name, n, num_levels), num_levels)
    assert torch.equal(stepped == IGNORE, hole_mask(name, n, num_levels).expand_as(stepped))
    # filling the holes with junk must not change what comes back
    junk = stepped.masked_fill(stepped == IGNORE, 12345)  # (..., steps, Q)
    assert torch.equal(deinterleave(name, stepped, n), codes)
    assert torch.equal(deinterleave(name, junk, n), codes)


@pytest.mark.parametrize("num_levels", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 5, 16])
def test_delay_holes(num_levels, n):
    stepped = interleave("delay", _codes(n, num_levels))  # (n + Q - 1, Q)
    assert num_steps("delay", n, num_levels) == n + num_levels - 1 == stepped.shape[0]
    assert int((stepped == IGNORE).sum()) == num_levels * (num_levels - 1)
    assert int(hole_mask("delay", n, num_levels).sum()) == num_levels * (num_levels - 1)
    for q in range(num_levels):
        column = stepped[:, q]  # (steps,)
        assert (column[:q] == IGNORE).all() and (column[q + n:] == IGNORE).all()
        assert (column[q:q + n] != IGNORE).all()


@pytest.mark.parametrize("num_levels", [2, 4])
@pytest.mark.parametrize("n", [1, 5, 16])
def test_delay_samples_lower_levels_first(num_levels, n):
    codes = _codes(n, num_levels)  # (n, Q)
    stepped = interleave("delay", codes)  # (steps, Q)
    step_of = {}
    for step, level in zip(*torch.nonzero(stepped != IGNORE, as_tuple=True)):
        value = int(stepped[step, level])
        position, value_level = divmod(value, num_levels)
        assert value_level == int(level), "a code moved to another level"
        step_of[position, value_level] = int(step)
    assert len(step_of) == n * num_levels, "every code appears exactly once"
    for position in range(n):
        for level in range(1, num_levels):
            assert step_of[position, level - 1] < step_of[position, level]


def test_parallel_has_no_holes():
    codes = _codes(5, 4)  # (5, 4)
    assert torch.equal(interleave("parallel", codes), codes)
    assert not hole_mask("parallel", 5, 4).any()


@pytest.mark.parametrize("num_levels", [1, 2, 4])
def test_flat_is_frame_major_one_level_per_step(num_levels):
    codes = _codes(5, num_levels)  # (5, Q): value i * Q + q
    stepped = interleave("flat", codes)  # (5Q, Q)
    assert num_steps("flat", 5, num_levels) == 5 * num_levels == stepped.shape[0]
    assert ((stepped != IGNORE).sum(1) == 1).all(), "exactly one level per step"
    assert torch.equal(stepped.max(1).values, torch.arange(5 * num_levels)), "steps visit codes frame-major"


@pytest.mark.parametrize("name", ["flat", "delay"])
@pytest.mark.parametrize("num_levels", [2, 4])
@pytest.mark.parametrize("n", [1, 5])
def test_lower_levels_come_first(name, num_levels, n):
    codes = _codes(n, num_levels)  # (n, Q)
    stepped = interleave(name, codes)  # (steps, Q)
    step_of = {}
    for step, level in zip(*torch.nonzero(stepped != IGNORE, as_tuple=True)):
        position, value_level = divmod(int(stepped[step, level]), num_levels)
        assert value_level == int(level)
        step_of[position, value_level] = int(step)
    assert len(step_of) == n * num_levels
    assert all(step_of[p, q - 1] < step_of[p, q] for p in range(n) for q in range(1, num_levels))


@pytest.mark.parametrize("batch", [None, 2])
def test_with_one_level_every_pattern_is_the_same(batch):
    codes = _codes(7, 1, batch)  # (..., 7, 1)
    for name in ("delay", "parallel"):
        assert torch.equal(interleave(name, codes), interleave("flat", codes))
        assert num_steps(name, 7, 1) == num_steps("flat", 7, 1)
        assert torch.equal(hole_mask(name, 7, 1), hole_mask("flat", 7, 1))


def test_unknown_pattern_names_the_known_ones():
    for call in (lambda: interleave("spiral", _codes(3, 2)), lambda: num_steps("spiral", 3, 2),
                 lambda: deinterleave("spiral", _codes(3, 2), 3), lambda: hole_mask("spiral", 3, 2)):
        with pytest.raises(ValueError, match="flat") as error:
            call()
        assert "delay" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_wrong_shapes(name):
    with pytest.raises(ValueError, match="codes must be"):
        interleave(name, torch.arange(6))  # (6,): no level dimension
    with pytest.raises(ValueError, match="codes must be"):
        interleave(name, torch.zeros(0, 2, dtype=torch.long))  # (0, 2): no positions
    stepped = interleave(name, _codes(5, 3))  # (steps, 3)
    with pytest.raises(ValueError, match="steps"):
        deinterleave(name, stepped, 4)
    with pytest.raises(ValueError, match="steps"):
        deinterleave(name, stepped[:-1], 5)
    with pytest.raises(ValueError, match="stepped must be"):
        deinterleave(name, stepped[:, 0], 5)
    with pytest.raises(ValueError, match="at least 1"):
        deinterleave(name, stepped, 0)
