"""Next-token head: a softmax over a codebook per position (GPT, LlamaGen, Emu3, MusicGen).

With `num_codebooks == Q > 1` it predicts Q levels in parallel from one hidden state (the RVQ
delay pattern of MusicGen): target_shape is then (Q,) instead of ().
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from heads.base import IGNORE_INDEX, Head, HeadOutput, HeadSpec
from heads.sampling import draw_uniform, mix_guidance, restrict_to_plausible, sample_logits, split_guidance


@dataclass
class NextTokenConfig:
    bias: bool = False


class NextToken(Head):
    Config = NextTokenConfig
    target_dtype = torch.long
    token_kinds = ("codes",)

    def __init__(self, config: NextTokenConfig, spec: HeadSpec) -> None:
        super().__init__(config, spec)
        if spec.codebook_size < 1 or spec.num_codebooks < 1:
            raise ValueError(f"{type(self).__name__} needs a codebook, got {spec}")
        self.proj = nn.Linear(spec.dim, spec.num_codebooks * spec.codebook_size, bias=config.bias)
        nn.init.normal_(self.proj.weight, std=0.02)

    @property
    def target_shape(self) -> tuple[int, ...]:
        return () if self.spec.num_codebooks == 1 else (self.spec.num_codebooks,)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, Q, V) float32 logits."""
        return self.proj(hidden).float().view(hidden.shape[0], self.spec.num_codebooks, -1)  # (N, Q, V)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> HeadOutput:
        logits = self.logits(hidden)  # (N, Q, V)
        target = target.reshape(target.shape[0], -1)  # (N, Q)
        flat_logits = rearrange(logits, "n q v -> (n q) v")
        flat_target = rearrange(target, "n q -> (n q)")
        loss_sum = F.cross_entropy(flat_logits, flat_target, ignore_index=IGNORE_INDEX, reduction="sum")
        valid = flat_target != IGNORE_INDEX  # (N*Q,)
        correct = ((flat_logits.argmax(-1) == flat_target) & valid).sum()
        return HeadOutput(loss_sum, valid.sum(), {"accuracy": correct.float()})

    @torch.no_grad()
    def sample(self, hidden, *, guidance_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, generator=None,
               noise: torch.Tensor | None = None, allowed: torch.Tensor | None = None, plausibility: float = 0.0,
               **options):
        """`allowed` (V,) bool, optional: draw only these codes (e.g. the `<m:…>` tokens of the text head).
        `plausibility`: with guidance, draw only codes whose conditional probability is at least this
        fraction of the top code's (`restrict_to_plausible`). `noise` (N, Q, 1): from `draw_noise`."""
        conditional, unconditional = split_guidance(self.logits(hidden), guidance_scale)  # (N, Q, V) each
        logits = mix_guidance(conditional, unconditional, guidance_scale)  # (N, Q, V)
        if unconditional is not None:
            logits = restrict_to_plausible(logits, conditional, plausibility)  # (N, Q, V)
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))  # (N, Q, V)
        codes = sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                              uniform=noise)  # (N, Q)
        return codes.view(codes.shape[0], *self.target_shape)

    def draw_noise(self, num_rows, generator, device, dtype):
        """One uniform per row and level: (N, Q, 1) float32, as `sample_logits` would draw it."""
        return draw_uniform((num_rows, self.spec.num_codebooks, 1), generator, device)  # (N, Q, 1)
