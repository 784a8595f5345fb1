"""Small pure sampling helpers shared by the heads (gpt-fast style): guidance, temperature, top-k/p.

`sample_logits` draws by inverse CDF: one uniform per row, a cumulative sum and a binary search.
Like gpt-fast's exponential race it never syncs with the host, but it needs one random number per
row instead of one per vocabulary entry: on CPU, 7x faster for 16 rows of 512 codes and 28x for
1024 rows (a next-scale scale), where drawing V exponentials dominated sampling.

Every shape here is static (top-k and top-p mask a sorted copy, nothing is gathered by a
data-dependent count), and the uniforms may be drawn beforehand and passed in: so the compiled
decode step (`mmar/decode.py`) runs this code without a generator and without host syncs.
A guidance scale may be a 0-d tensor: the step's scale then comes in as data (one graph for every
step of a schedule), and a tensor scale always means "guided".
"""

from __future__ import annotations

import math

import torch


def guiding(guidance_scale: float | torch.Tensor) -> bool:
    """Whether a guidance scale mixes two halves: any scale but 1, and always a tensor scale (decided statically)."""
    return torch.is_tensor(guidance_scale) or guidance_scale != 1.0


def split_guidance(hidden: torch.Tensor, guidance_scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(2N, D) -> conditional (N, D), unconditional (N, D) when guiding; else (hidden, None)."""
    if not guiding(guidance_scale):
        return hidden, None
    if hidden.shape[0] % 2:
        raise ValueError(f"guidance needs (2N, D) hidden states (cond rows then uncond), got {tuple(hidden.shape)}")
    conditional, unconditional = hidden.chunk(2, dim=0)  # (N, D) each
    return conditional, unconditional


def mix_guidance(conditional: torch.Tensor, unconditional: torch.Tensor | None,
                 guidance_scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: u + s * (c - u). Works for logits and velocities alike."""
    if unconditional is None:
        return conditional
    return unconditional + guidance_scale * (conditional - unconditional)


def restrict_to_plausible(logits: torch.Tensor, conditional: torch.Tensor, plausibility: float) -> torch.Tensor:
    """Keep only codes the conditional model finds plausible: p_c(v) >= plausibility * max_v p_c(v).

    Guidance u + s (c - u) rewards a code for how much more likely the prompt makes it, however
    unlikely it is: a code at log-probability -10 under the prompt and -25 without it gains 15 s.
    A model that memorises its data is sure of its continuations with and without the prompt, so
    these tail codes win often (measured on Fashion-MNIST: 8% of the codes drawn at CFG 3 had
    under 1% of the top code's conditional probability, 4% at CFG 1.5) and samples turn to noise.
    This is contrastive decoding's adaptive plausibility constraint (Li et al. 2023), applied to
    classifier-free guidance. logits, conditional (..., V) -> logits with implausible codes at -inf.
    """
    if plausibility <= 0:
        return logits
    log_probs = conditional.float().log_softmax(dim=-1)  # (..., V)
    floor = log_probs.max(dim=-1, keepdim=True).values + math.log(plausibility)  # (..., 1)
    return logits.masked_fill(log_probs < floor, float("-inf"))


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one index per row of `logits (..., V)` -> (...) long. temperature 0 is greedy.

    `uniform` (..., 1) in [0, 1): the row's random number, drawn beforehand (`draw_uniform`); when
    None it is drawn here from `generator`, which gives the same draw for the same generator state.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() if temperature == 1 else logits.float() / temperature  # (..., V)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already exceeds top_p (the top token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) > top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    cumulative = logits.softmax(dim=-1).cumsum(dim=-1)  # (..., V)
    total = cumulative[..., -1:]  # (..., 1): 1 up to rounding
    # u in [0, total) strictly, so the search lands on a token of positive probability: the first
    # index whose cumulative mass exceeds u (a zero-probability token repeats its left neighbour's).
    if uniform is None:
        uniform = draw_uniform(total.shape, generator, total.device)  # (..., 1)
    uniform = uniform.view(total.shape) * total  # (..., 1)
    uniform = torch.minimum(uniform, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(-1)


def draw_uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """The uniforms `sample_logits` uses, (..., 1) float32 in [0, 1): drawn ahead of a compiled step."""
    return torch.rand(shape, generator=generator, device=device)  # (..., 1)
