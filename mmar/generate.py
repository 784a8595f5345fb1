"""Generation as plain functions: prefill the prompt, then fill one modality segment.

Classifier-free guidance by batch doubling: rows [:N] carry the prompts, rows [N:] an empty text
(left-padded, so every row's prompt ends in the last column); the head mixes the two halves
itself and the drawn tokens are fed to both. The segment is filled one position at a time
(next-token, flow) or one whole scale per transformer call (next-scale), with a static KV cache
(gpt-fast) or, for testing, by recomputing the whole sequence every step (`use_cache=False`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mmar.layout import grid_positions, scale_positions
from mmar.model import MMAR
from mmar.packing import Batch, Segment, pack

GUIDANCE_SCHEDULES = ("constant", "linear")


@dataclass
class SamplingConfig:
    guidance_scale: float = 3.0  # 1 disables classifier-free guidance
    guidance_schedule: str = "constant"  # or "linear": grows from ~1 to guidance_scale over positions / scales
    temperature: float = 1.0  # 0 is greedy (discrete heads); noise scale for flow
    top_k: int = 0  # 0 keeps all
    top_p: float = 1.0
    seed: int = 0
    head_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_steps": 16} for flow

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.guidance_scale}")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {GUIDANCE_SCHEDULES}, got {self.guidance_schedule!r}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def guidance_at(self, step: int, num_steps: int) -> float:
        if self.guidance_schedule == "constant":
            return self.guidance_scale
        return 1.0 + (self.guidance_scale - 1.0) * (step + 1) / num_steps


class Sequence:
    """The growing sequence of one generation: cached (static KV cache) or recomputed every step."""

    def __init__(self, model: MMAR, batch: Batch, extra: int, use_cache: bool, compile_step: bool = False) -> None:
        self.model, self.use_cache = model, use_cache
        x = model.embed(batch.ids, batch.vectors)  # (B, T0, D)
        self.length = x.shape[1]
        self.positions, self.block = batch.positions, batch.block
        # Compiled: the cached step has static shapes (CUDA-graph friendly); the recomputed forward
        # grows by one position a step, so it is compiled once for every length (dynamic shapes).
        self.step_fn = torch.compile(model.transformer, dynamic=not use_cache) if compile_step else model.transformer
        if use_cache:
            model.transformer.setup_caches(x.shape[0], self.length + extra)
            slots = torch.arange(self.length, device=x.device)  # (T0,)
            self.last_hidden = model.transformer(x, slots, batch.positions, batch.block)[:, -1]  # (B, D)
        else:
            self.x = x
            self.last_hidden = self._recompute()[:, -1]

    def _recompute(self) -> torch.Tensor:
        slots = torch.arange(self.x.shape[1], device=self.x.device)  # (T,)
        return self.step_fn(self.x, slots, self.positions, self.block)  # (B, T, D)

    def extend(self, x: torch.Tensor, positions: torch.Tensor, one_block: bool) -> torch.Tensor:
        """Append x (B, n, D) at `positions` (B, n, 3) -> their hidden states (B, n, D).

        `one_block` puts all n positions in one attention block (a next-scale scale); else causal.
        """
        batch, n, _ = x.shape
        slots = torch.arange(self.length, self.length + n, device=x.device)  # (n,)
        block = (slots[:1].expand(n) if one_block else slots).expand(batch, n)  # (B, n)
        self.length += n
        if self.use_cache:
            return self.step_fn(x, slots, positions, block)
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.block = torch.cat([self.block, block], dim=1)
        self.x = torch.cat([self.x, x], dim=1)
        return self._recompute()[:, -n:]

    def close(self) -> None:
        if self.use_cache:
            self.model.transformer.clear_caches()


def prompt_batch(model: MMAR, prompts: list[torch.Tensor], modality: str, guided: bool) -> Batch:
    """Byte prompts (n_i,) -> a left-padded batch that ends with `<m:modality>` (+ empty-text rows).

    `pack` builds on the CPU (the caller moves the batch), so prompts may come from any device."""
    samples = [[Segment("text", p.cpu()), Segment(modality, None)] for p in prompts]
    if guided:
        samples += [[Segment("text", torch.zeros(0, dtype=torch.long)), Segment(modality, None)]] * len(prompts)
    return pack(samples, model.layout)


@torch.inference_mode()
def generate(
    model: MMAR,
    prompts: list[torch.Tensor],
    modality: str,
    config: SamplingConfig,
    *,
    teacher_inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    use_cache: bool = True,
    compile_step: bool = False,
) -> torch.Tensor:
    """Fill one `modality` segment after each byte prompt.

    Returns codes (N, h, w) (next-token), flat multi-scale codes (N, L) (next-scale, which needs the
    tokenizer's `teacher_inputs`), or latents (N, h, w, C) (flow).
    """
    spec = model.layout.modalities[modality]
    device = model.token_embedding.weight.device
    batch = prompt_batch(model, prompts, modality, config.guided).to(device)
    generator = torch.Generator(device).manual_seed(config.seed)
    sequence = Sequence(model, batch, spec.num_tokens, use_cache, compile_step)
    start = batch.positions[:, -1, 0] + 1  # (B,) the grid opens one past <m>
    try:
        if spec.kind == "scales":
            if teacher_inputs is None:
                raise ValueError(f"next-scale generation of {modality!r} needs the tokenizer's teacher_inputs")
            return _fill_scales(model, sequence, spec, start, config, generator, teacher_inputs)
        return _fill_causal(model, sequence, spec, start, config, generator)
    finally:
        sequence.close()


def _sample(model: MMAR, name: str, hidden: torch.Tensor, config: SamplingConfig, scale: float, generator) -> torch.Tensor:
    """hidden (B, D) with B = 2N when guided -> (N, *target_shape)."""
    if config.guided and scale == 1.0:
        hidden = hidden[: hidden.shape[0] // 2]  # exactly 1: conditional rows alone
    return model.heads[name].sample(hidden, guidance_scale=scale, temperature=config.temperature, top_k=config.top_k,
                                    top_p=config.top_p, generator=generator, **config.head_options)


def _fill_causal(model, sequence, spec, start, config, generator) -> torch.Tensor:
    """Next-token or flow: one position per step, raster order."""
    name, n = spec.name, spec.num_tokens
    positions = grid_positions(spec.grid, start)  # (B, n, 3)
    copies = 2 if config.guided else 1
    hidden, drawn = sequence.last_hidden, []  # (B, D)
    for i in range(n):
        token = _sample(model, name, hidden, config, config.guidance_at(i, n), generator)  # (N, ...)
        drawn.append(token)
        if i == n - 1:
            break
        if copies > 1:
            token = torch.cat([token] * copies)  # (B, ...)
        if spec.kind == "codes":
            x = model.token_embedding(model.layout.code_ids(name, token))  # (B, D)
        else:
            x = model.in_projections[name](token, torch.zeros(len(token), dtype=torch.long, device=token.device))  # (B, D)
        hidden = sequence.extend(x[:, None], positions[:, i:i + 1], one_block=False)[:, -1]  # (B, D)
    out = torch.stack(drawn, dim=1)  # (N, n, ...)
    _, h, w = spec.grid
    return out.view(out.shape[0], h, w, *out.shape[2:]) if spec.grid[0] == 1 else out.view(out.shape[0], *spec.grid, *out.shape[2:])


def _fill_scales(model, sequence, spec, start, config, generator, teacher_inputs) -> torch.Tensor:
    """Next-scale: scale 1 from the `<m>` position, then one transformer call per scale (VAR)."""
    name, scales = spec.name, spec.scales
    positions = scale_positions(scales, spec.grid, start)  # (B, L, 3)
    copies = 2 if config.guided else 1
    codes = _sample(model, name, sequence.last_hidden, config, config.guidance_at(0, len(scales)), generator)[:, None]  # (N, 1)
    offset = 1
    for k, (h, w) in enumerate(scales[1:], start=1):
        inputs = teacher_inputs(codes)[:, -h * w:]  # (N, h*w, C)
        inputs = inputs.repeat(copies, 1, 1)  # (B, h*w, C)
        scale = torch.full(inputs.shape[:2], k, dtype=torch.long, device=inputs.device)  # (B, h*w)
        x = model.in_projections[name](inputs, scale)  # (B, h*w, D)
        hidden = sequence.extend(x, positions[:, offset:offset + h * w], one_block=True)  # (B, h*w, D)
        drawn = _sample(model, name, hidden.flatten(0, 1), config, config.guidance_at(k, len(scales)), generator)  # (N*h*w,)
        codes = torch.cat([codes, drawn.view(codes.shape[0], h * w)], dim=1)  # (N, offset + h*w)
        offset += h * w
    return codes
