"""The divergence guard: a run that blows up stops, and nothing it wrote after the blow-up is kept.

Rules, for both training loops (the README's "Bad input" section says the same):

1. A step whose gradient norm or loss is non-finite is skipped: no optimiser or EMA update.
2. A loss spike is skipped too: once `MIN_HISTORY` steps have been applied, a step whose loss is
   above `loss_spike_factor` times the median loss of the last `WINDOW` applied steps (the idea of
   llm-foundry's kill-loss-spike callback, and PaLM's remedy of skipping the batches of a spike).
3. `max_nonfinite` skipped steps in a row stop the run.
4. After every applied step the weights, the EMA and the optimiser moments are checked finite
   (one fused norm each); a non-finite value stops the run at once: that state is poisoned.
5. A checkpoint is written only while the run is healthy (its last step was applied); one that
   falls due during a run of skipped steps waits for the next healthy step.

A `Divergence` is one line naming the step, the last good checkpoint (from which `--resume`
continues once the setting is fixed) and what to change. Every rank decides alike: the gradient norm
and the loss are reduced over ranks before the guard sees them, and the weights are identical.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import torch

WINDOW = 50  # applied steps whose median loss is the spike reference
MIN_HISTORY = 20  # no spike is called before this many applied steps


class Divergence(FloatingPointError):
    """The run diverged; the message says at which step and what to change."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating tensor is free of NaN and infinity (one fused norm, one host sync)."""
    floats = [t.detach() for t in tensors if t.dtype.is_floating_point and t.numel()]
    if not floats:
        return True
    return bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(floats)])).all())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


class DivergenceGuard:
    """Decides per step whether to apply it, and whether the run's state may be checkpointed."""

    def __init__(self, max_skipped: int, loss_spike_factor: float, checkpoints: Path) -> None:
        self.max_skipped, self.spike_factor, self.checkpoints = max_skipped, loss_spike_factor, checkpoints
        self.in_a_row = 0
        self.history: deque[float] = deque(maxlen=WINDOW)

    @property
    def healthy(self) -> bool:
        """True when the last step was applied: the state may be checkpointed."""
        return self.in_a_row == 0

    def new_phase(self) -> None:
        """The loss changes scale on purpose (a video tokenizer moves from single frames to clips): a
        spike is measured against the new phase's own steps only."""
        self.history.clear()

    def allow(self, step: int, grad_norm: torch.Tensor, loss: torch.Tensor) -> bool:
        """True when step `step` may be applied; raises `Divergence` after too many skipped in a row."""
        loss_value = float(loss)
        reason = None
        if not (torch.isfinite(grad_norm) and torch.isfinite(loss)):
            reason = "non-finite loss or gradients"
        elif self.spike_factor and len(self.history) >= MIN_HISTORY:
            reference = statistics.median(self.history)
            if loss_value > self.spike_factor * reference:
                reason = f"loss spike ({loss_value:.4g} > {self.spike_factor:g} x median {reference:.4g})"
        if reason is None:
            self.in_a_row = 0
            self.history.append(loss_value)
            return True
        self.in_a_row += 1
        if self.in_a_row >= self.max_skipped:
            raise self._diverged(f"{self.in_a_row} steps in a row skipped (the last, step {step}: {reason})")
        return False

    def check_state(self, step: int, tensors: dict[str, Iterable[torch.Tensor]]) -> None:
        """After an applied step: every group of tensors ("weights", "EMA", ...) must be finite."""
        for name, group in tensors.items():
            if not all_finite(group):
                raise self._diverged(f"step {step} made the {name} non-finite")

    def _diverged(self, what: str) -> Divergence:
        """The one line a diverged run ends with: what happened, the last good checkpoint, what to do."""
        from trainers.checkpoint import list_checkpoints

        saved = list_checkpoints(self.checkpoints)
        where = (f"the last good checkpoint is {saved[-1]}: lower optim.learning_rate (or check the data and "
                 "optim.ema_beta), then run again with --resume to continue from it" if saved else
                 "no checkpoint was written yet: lower optim.learning_rate (or check the data), then start again")
        return Divergence(f"training diverged: {what}; {where}")
