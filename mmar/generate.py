"""Generation as plain functions: prefill a prompt, fill one modality segment, or continue text.

Classifier-free guidance by batch doubling: rows [:N] carry the prompts, rows [N:] an empty text
(left-padded, so every row's prompt ends in the last column); the head mixes the two halves
itself and the drawn tokens are fed to both. A segment is filled one position at a time
(next-token, flow; multi-codebook codes one pattern step at a time) or one whole scale per
transformer call (next-scale), with a static KV cache (gpt-fast) or, for testing, by recomputing
the whole sequence every step (`use_cache=False`). Text comes from the text head, one byte a step,
until `<eos>`, an `<m:name>` token or a length limit; `choose_modality` lets the text head open
the segment (`<m:name>` drawn from the open tokens only). Every drawn value enters the sequence
through `MMAR.embed_tokens`, the same path training uses.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mmar import patterns
from mmar.config import validate
from mmar.decode import DecodeSteps, at, compile_dynamic
from mmar.layout import EOS, grid_positions, scale_positions
from mmar.model import MMAR
from mmar.packing import Batch, Segment, pack
from mmar.transformer import real_positions

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
    # discrete heads, with guidance: draw only codes with at least this fraction of the top code's
    # conditional probability (heads.sampling.restrict_to_plausible); 0 keeps every code
    plausibility: float = 0.0

    LIMITS = {"guidance_scale": "[0, 1000]", "temperature": "[0, 100]", "top_k": "[0, inf)", "top_p": "(0, 1]",
              "seed": "[0, 9.2e18]", "plausibility": "[0, 1]"}

    def __post_init__(self) -> None:
        validate(self)  # types, finite numbers, LIMITS, check()

    def check(self) -> None:
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
    """The growing sequence of one generation: cached (static KV cache) or recomputed every step.

    `take(n)` hands out the next n cache slots; `feed(x, slots, positions, block, visible)` appends x
    there and returns its hidden states. The cached feed is the transformer itself, which a compiled
    decode step calls directly (`feed_fn`); the cache length is rounded up to a multiple of
    `CACHE_MULTIPLE`, so prompts of nearby lengths share one compiled graph.

    `sources`: row i of the batch repeats row `sources[i]` (itself if first): the cached prefill
    computes each distinct row once and copies its cache (`Transformer.spread_rows`): several samples
    of one prompt, and guidance's unconditional rows, all one row. The recomputing reference path
    computes every row.

    `compiled`: the cached prefill, or the recomputed forward, runs compiled with dynamic shapes
    (`decode.compile_dynamic`): one graph for prompts of every length.
    """

    def __init__(self, model: MMAR, batch: Batch, extra: int, use_cache: bool, compiled: bool = False,
                 sources: list[int] | None = None) -> None:
        self.model, self.use_cache = model, use_cache
        x = model.embed(batch.ids, batch.vectors)  # (B, T0, D)
        self.length = 0
        if use_cache:
            self.capacity = cache_length(x.shape[1] + extra, model.transformer.config.max_len)  # cache slots
            model.transformer.setup_caches(x.shape[0], self.capacity)
            self.feed_fn = model.transformer
            distinct = sorted(set(range(x.shape[0]) if sources is None else sources))  # the rows computed
            repeats = len(distinct) < x.shape[0]
            positions, block = batch.positions, batch.block
            if repeats:
                x, positions, block = x[distinct], positions[distinct], block[distinct]  # (R, T0, ...)
            # A left-padded batch (prompts of several lengths; guidance's empty text) prefills its real
            # positions only.
            real = real_positions(block)  # (rows (M,), columns (M,))
            where = real if len(real[0]) < block.numel() else None
            prefill = compile_dynamic(model.transformer) if compiled else model.transformer
            hidden = prefill(x, self.take(x.shape[1]), positions, block, self.length, where)[:, -1]  # (R, D)
            if repeats:
                index = torch.tensor([distinct.index(source) for source in sources], device=hidden.device)  # (B,)
                model.transformer.spread_rows(index, self.length)
                hidden = hidden[index]  # (B, D)
            self.last_hidden = hidden  # (B, D)
        else:
            # The recomputed forward grows by one position a step: compiled (for `mmar bench`'s
            # like-for-like comparison) once for every length, with dynamic shapes.
            self.forward = compile_dynamic(model.transformer) if compiled else model.transformer
            self.feed_fn = self.feed
            self.x, self.positions, self.block = x[:, :0], batch.positions[:, :0], batch.block[:, :0]  # empty so far
            self.last_hidden = self.feed(x, self.take(x.shape[1]), batch.positions, batch.block)[:, -1]  # (B, D)

    def span(self, written: int) -> int | None:
        """The cache slots a decode step (a next-token step, a next-scale scale) attends to once
        `written` slots hold values: the smallest multiple of the span unit that holds them. The unit
        is a quarter of the cache in whole CACHE_MULTIPLEs, at least SPAN_MIN slots: a compiled decode
        loop runs at most four graphs (one for a short cache, where reading it all costs little
        against another compile) and a long one reads ~5/8 of the cache on average. None uncached
        (the recomputed sequence is exactly as long as written)."""
        if not self.use_cache:
            return None
        unit = max(SPAN_MIN, round_up(-(-self.capacity // 4), CACHE_MULTIPLE))
        return min(self.capacity, round_up(written, unit))

    def take(self, n: int) -> torch.Tensor:
        """The next n slots (n,), in order."""
        slots = torch.arange(self.length, self.length + n, device=self.model.transformer.norm.weight.device)  # (n,)
        self.length += n
        return slots

    def feed(self, x: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, block: torch.Tensor,
             visible: int | None = None) -> torch.Tensor:
        """Append x (B, n, D) at `slots` (n,), `positions` (B, n, 3), attention `block` (B, n), or (B, 1) for
        one block -> hidden (B, n, D).

        Cached, attention reads the first `visible` slots (default: every slot handed out so far)."""
        if self.use_cache:
            return self.model.transformer(x, slots, positions, block, self.length if visible is None else visible)
        self.positions = torch.cat([self.positions, positions], dim=1)  # (B, T, 3)
        self.block = torch.cat([self.block, block.expand(-1, x.shape[1])], dim=1)  # (B, T)
        self.x = torch.cat([self.x, x], dim=1)  # (B, T, D)
        every = torch.arange(self.x.shape[1], device=x.device)  # (T,)
        return self.forward(self.x, every, self.positions, self.block)[:, -x.shape[1]:]  # (B, n, D)

    def extend(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append x (B, n, D) at the next slots and `positions` (B, n, 3), causally -> hidden states (B, n, D)."""
        slots = self.take(x.shape[1])  # (n,)
        return self.feed(x, slots, positions, slots.expand(x.shape[0], -1))  # block (B, n): each its own

    def close(self) -> None:
        if self.use_cache:
            self.model.transformer.clear_caches()


#: the cache length is a multiple of this (capped at the model's max_len): fewer distinct shapes to compile
CACHE_MULTIPLE = 32
#: the smallest span of cache slots a compiled next-token step attends to (`Sequence.span`)
SPAN_MIN = 128


def cache_length(needed: int, limit: int) -> int:
    """`needed` rounded up to a multiple of CACHE_MULTIPLE, at most `limit` (the transformer checks `needed`)."""
    return max(needed, min(limit, round_up(needed, CACHE_MULTIPLE)))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least n."""
    return -(-n // multiple) * multiple


def prompt_batch(model: MMAR, prompts: list[torch.Tensor], modality: str, guided: bool) -> Batch:
    """Byte prompts (n_i,) -> a left-padded batch that ends with `<m:modality>` (+ empty-text rows).

    `pack` builds on the CPU (the caller moves the batch), so prompts may come from any device."""
    samples = [[Segment("text", p.cpu()), Segment(modality, None)] for p in prompts]
    if guided:
        samples += [[Segment("text", torch.zeros(0, dtype=torch.long)), Segment(modality, None)]] * len(prompts)
    return pack(samples, model.layout)


def first_copies(prompts: list[torch.Tensor], guided: bool) -> list[int]:
    """Row i of `prompt_batch` -> the first row with the same prompt (the empty text's rows: row N)."""
    first: dict[tuple[int, ...], int] = {}
    rows = [first.setdefault(tuple(prompt.tolist()), i) for i, prompt in enumerate(prompts)]
    return rows + [len(prompts)] * len(prompts) if guided else rows


def _device(model: MMAR) -> torch.device:
    return model.token_embedding.weight.device


@torch.inference_mode()
def generate(
    model: MMAR,
    prompts: list[torch.Tensor],
    modality: str,
    config: SamplingConfig,
    *,
    teacher_inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    use_cache: bool = True,
    compile_step: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Fill one `modality` segment after each byte prompt.

    `compile_step`: run each decode step (`mmar/decode.py`) compiled as a whole, and the prompt's
    prefill compiled with dynamic shapes; None compiles on CUDA only (on CPU a cold compile costs
    tens of seconds). Compiled and eager draw the same codes for the same seed, up to the rounding
    of fused kernels. Uncached, it compiles the recomputed forward instead (dynamic shapes), for
    like-for-like timing.

    `progress(done, total)` is called with 0 before the prompt's prefill (compiled: the warm-up
    starts) and after every drawn position (next-token, flow) or scale (next-scale), from the Python
    loop, outside the compiled step: a demo's progress bar.

    Returns codes (N, *token_shape) (next-token; multi-codebook codes (N, *token_shape, Q) after
    undoing the pattern), flat multi-scale codes (N, L) (next-scale, which needs the tokenizer's
    `teacher_inputs`), or latents (N, *token_shape, C) (flow).
    """
    if modality not in model.layout.modalities:
        raise ValueError(f"this model has no modality {modality!r}; it has {sorted(model.layout.modalities)}")
    spec = model.layout.modalities[modality]
    if spec.kind == "scales" and teacher_inputs is None:
        raise ValueError(f"next-scale generation of {modality!r} needs the tokenizer's teacher_inputs")
    device = _device(model)
    compile_step = device.type == "cuda" if compile_step is None else compile_step
    batch = prompt_batch(model, prompts, modality, config.guided).to(device)
    generator = torch.Generator(device).manual_seed(config.seed)
    if progress is not None:
        progress(0, len(spec.scales) if spec.kind == "scales" else spec.num_tokens)
    sequence = Sequence(model, batch, spec.num_tokens, use_cache, compiled=compile_step,
                        sources=first_copies(prompts, config.guided))
    options = {"temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
               "plausibility": config.plausibility, **config.head_options}
    steps = DecodeSteps(model, spec.name, options, config.guided, sequence.feed_fn, compile_step and use_cache,
                        teacher_inputs)
    fill = _fill_scales if spec.kind == "scales" else _fill_causal
    start = batch.positions[:, -1, 0] + 1  # (B,) the grid opens one past <m>
    try:
        with steps.limits(), torch.profiler.record_function("mmar::fill"):  # bench: the loop's share in the step
            return fill(model, sequence, spec, start, config, generator, steps, progress)
    finally:
        sequence.close()


def _sample(model: MMAR, name: str, hidden: torch.Tensor, config: SamplingConfig, scale: float, generator,
            **options) -> torch.Tensor:
    """hidden (B, D) with B = 2N when guided -> (N, *target_shape) (text: eager, from the generator)."""
    if config.guided and scale == 1.0:
        hidden = hidden[: hidden.shape[0] // 2]  # exactly 1: conditional rows alone
    return model.heads[name].sample(hidden, guidance_scale=scale, temperature=config.temperature, top_k=config.top_k,
                                    top_p=config.top_p, generator=generator, plausibility=config.plausibility,
                                    **config.head_options, **options)


def _guidance(config: SamplingConfig, num_steps: int, device) -> torch.Tensor | None:
    """The schedule's scale at every step (num_steps,), on the device (None without guidance): data, not constants,
    so one compiled graph serves every step."""
    if not config.guided:
        return None
    return torch.tensor([config.guidance_at(i, num_steps) for i in range(num_steps)], dtype=torch.float64,
                        device=device)  # (S,)


def _fill_causal(model, sequence, spec, start, config, generator, steps, progress=None) -> torch.Tensor:
    """Next-token or flow: one position (pattern step) per transformer call, raster order, `steps.per_call`
    steps a decode call."""
    name, n = spec.name, spec.num_tokens
    device, head = start.device, model.heads[spec.name]
    num_rows = len(start) // (2 if config.guided else 1)
    positions = grid_positions(spec.grid, start, n)  # (B, n, 3)
    written = sequence.length  # slots holding values before the first drawn token is fed back
    slots = sequence.take(n - 1)  # (n-1,) the drawn tokens but the last are fed back
    guidance = _guidance(config, n, device)  # (n,) or None
    holes = patterns.hole_mask(spec.pattern, spec.num_cells, spec.num_codebooks).to(device) \
        if spec.multi_codebook else None  # (n, Q)
    dtype = sequence.last_hidden.dtype
    noise = head.draw_noise(num_rows, generator, device, dtype)  # (N, Q, 1) uniforms or (N, C) normals
    token = steps.first(sequence.last_hidden, at(guidance, 0), noise, at(holes, 0))  # (N, ...)
    drawn = [token]
    if progress is not None:
        progress(1, n)

    def advance(i: int, count: int, token: torch.Tensor, span: int | None) -> torch.Tensor:
        """Feed position i-1's token, draw positions i..i+count-1 (N, ...) each; return the last."""
        noises = [head.draw_noise(num_rows, generator, device, dtype) for _ in range(count)]  # outside: a pure step
        here, drawing = slice(i - 1, i - 1 + count), slice(i, i + count)  # fed back; drawn
        new = steps.causal(token, slots[here], span, positions[:, here], at(guidance, drawing), noises,
                           at(holes, drawing))
        drawn.extend(steps.keep(each) for each in new)  # (N, ...) each
        if progress is not None:
            for done in range(i + 1, i + count + 1):
                progress(done, n)
        return new[-1]

    # Step i writes slot written + i - 1 and attends to the span holding it: a graph per span and call
    # size. A span opens with one step, then takes steps.per_call at a time (the last call may be
    # short), so a prompt of any length needs the same graphs.
    for span, run in itertools.groupby(range(1, n), key=lambda i: sequence.span(written + i)):
        run = list(run)
        for first in run[:1] + run[1::steps.per_call]:
            count = 1 if first == run[0] else min(steps.per_call, run[-1] + 1 - first)
            with steps.guards((span, count)):
                token = advance(first, count, token, span)
    out = torch.stack(drawn, dim=1)  # (N, n, ...)
    if spec.multi_codebook:
        out = patterns.deinterleave(spec.pattern, out, spec.num_cells)  # (N, cells, Q)
    return out.reshape(out.shape[0], *spec.output_shape, *out.shape[2:])


def _fill_scales(model, sequence, spec, start, config, generator, steps, progress=None) -> torch.Tensor:
    """Next-scale: scale 1 from the `<m>` position, then one transformer call per scale (VAR); compiled,
    every scale after the first runs as one graph (`decode.scales_steps`)."""
    scales, head = spec.scales, model.heads[spec.name]
    device, dtype = start.device, sequence.last_hidden.dtype
    num_rows = len(start) // (2 if config.guided else 1)
    sizes = tuple(h * w for h, w in scales)
    positions = scale_positions(scales, spec.grid, start)  # (B, L, 3)
    guidance = _guidance(config, len(scales), device)  # (K,) or None
    noises = [head.draw_noise(num_rows * size, generator, device, dtype) for size in sizes]  # (N*h*w, 1, 1) each
    codes = steps.first(sequence.last_hidden, at(guidance, 0), noises[0], None)[:, None]  # (N, 1)
    if progress is not None:
        progress(1, len(scales))
    # Scales 2.. fill the next slots; each attends to the span holding the slots written by its end
    # (rounded, so prompts of nearby lengths share the compiled graph).
    visible = tuple(sequence.span(sequence.length + end) for end in itertools.accumulate(sizes[1:]))
    slots = sequence.take(spec.num_tokens - 1)  # (L-1,)
    report = None if progress is None or steps.compiled else (lambda done: progress(done, len(scales)))
    codes = steps.scales(sizes, visible, codes, slots, positions[:, 1:], guidance, noises[1:], report)  # (N, L)
    if progress is not None and steps.compiled:
        progress(len(scales), len(scales))
    return steps.keep(codes)


# --- text ------------------------------------------------------------------------------------
def _text_sequence(model: MMAR, samples: list[list[Segment]], extra: int, use_cache: bool) -> tuple[Sequence, torch.Tensor]:
    """Prefill `samples` (each ending where text continues) -> (sequence, next text position (B,))."""
    batch = pack(samples, model.layout).to(_device(model))
    return Sequence(model, batch, extra, use_cache), batch.positions[:, -1, 0] + 1


@torch.inference_mode()
def generate_text(model: MMAR, samples: list[list[Segment]], config: SamplingConfig, *, max_new_tokens: int = 64,
                  use_cache: bool = True) -> list[torch.Tensor]:
    """Continue each sample with text from the text head -> one byte tensor (n_i,) per sample.

    Drawn from bytes, `<eos>` and the `<m:…>` tokens only; a row stops at `<eos>`, at an `<m:…>`
    (a segment would open: the text ends there) or after `max_new_tokens`. Temperature 0 is greedy.
    No guidance: the text head is conditioned on everything before it.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    layout = model.layout
    sequence, position = _text_sequence(model, samples, max_new_tokens, use_cache)
    device = position.device
    allowed = torch.zeros(layout.text_vocab_size, dtype=torch.bool, device=device)  # (V,)
    allowed[layout.byte_offset:layout.text_vocab_size] = True
    allowed[EOS] = True
    allowed[layout.open_ids.to(device)] = True
    stops = torch.cat([torch.tensor([EOS]), layout.open_ids]).to(device)  # (S,)
    unguided = SamplingConfig(1.0, "constant", config.temperature, config.top_k, config.top_p, config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)
    hidden, drawn = sequence.last_hidden, []  # (B, D)
    finished = torch.zeros(len(samples), dtype=torch.bool, device=device)  # (B,)
    try:
        for i in range(max_new_tokens):
            token = _sample(model, "text", hidden, unguided, 1.0, generator, allowed=allowed)  # (B,)
            finished = finished | torch.isin(token, stops)
            drawn.append(torch.where(finished, EOS, token))
            if i == max_new_tokens - 1 or bool(finished.all()):
                break
            x = model.embed_tokens("text", token)  # (B, D)
            step_positions = (position + i).view(-1, 1, 1).expand(-1, 1, 3)  # (B, 1, 3)
            hidden = sequence.extend(x[:, None], step_positions)[:, -1]  # (B, D)
    finally:
        sequence.close()
    tokens = torch.stack(drawn, dim=1).cpu()  # (B, n)
    return [row[: int((row == EOS).nonzero()[0]) if (row == EOS).any() else len(row)] - layout.byte_offset
            for row in tokens]


@torch.inference_mode()
def choose_modality(model: MMAR, prompts: list[torch.Tensor], config: SamplingConfig,
                    among: list[str] | None = None) -> list[str]:
    """The text head picks which segment to open after each byte prompt -> a modality name per prompt.

    `<m:name>` is drawn from the text head's distribution restricted to the open tokens of `among`
    (default: every modality of the model), at the config's temperature (0: the most likely one).
    """
    layout = model.layout
    names = list(layout.modalities) if among is None else among
    unknown = sorted(set(names) - set(layout.modalities))
    if unknown or not names:
        raise ValueError(f"cannot choose among {names}: this model has {sorted(layout.modalities)}")
    sequence, _ = _text_sequence(model, [[Segment("text", p.cpu())] for p in prompts], 0, use_cache=False)
    device = sequence.last_hidden.device
    allowed = torch.zeros(layout.text_vocab_size, dtype=torch.bool, device=device)  # (V,)
    allowed[[layout.open_id[name] for name in names]] = True
    unguided = SamplingConfig(1.0, "constant", config.temperature, 0, 1.0, config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)
    token = _sample(model, "text", sequence.last_hidden, unguided, 1.0, generator, allowed=allowed)  # (B,)
    return [layout.modality_of_open(int(t)) for t in token]
