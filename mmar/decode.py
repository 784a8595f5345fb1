"""The decode step of each head kind, one static function, compiled as a whole (CUDA graphs on GPU).

A step takes what was drawn last and returns what is drawn next: it embeds the drawn values through
`MMAR.embed_tokens` (both guidance halves), runs one cached transformer call at fixed cache slots,
and lets the head draw — logits or the flow ODE solve, guidance mixing, top-k / top-p, sampling.
Its shapes are the same at every step and it never reads a value back to the host: the cache slot,
the positions, the guidance scale of a schedule and the random numbers come in as tensors (the
random numbers drawn from the sampling generator outside, in the same order eager or compiled,
`Head.draw_noise`), so one graph serves every step of a cache span and the Python loop in
`mmar/generate.py` only calls it. The span is the part of the KV cache a step attends to, a
static count of slots in steps of a quarter of the cache, at least 128 (`Sequence.span`): a loop
runs at most four graphs (one for a short cache) and a long one reads ~5/8 of the cache on
average. Calls are few, since each costs a fixed overhead besides its kernels: one call runs two
discrete causal steps in a row (`STEPS_PER_CALL`, `causal_steps`). A next-scale step draws a whole
scale and computes that scale's inputs from the codes drawn so far inside the step (the
tokenizer's `teacher_inputs`); every scale after the first runs in one call (`scales_steps`: one
graph, one guard check per image), each scale attending to the span that holds the slots written
by its end. Prefill stays outside: its length follows the prompt, so it is a graph of its own with
dynamic shapes (`compile_dynamic`), and it computes each distinct row once (repeated prompts and
guidance's empty-text rows; `Sequence`) and only its real positions (a left-padded row's padding
skipped: `Transformer.forward`'s `where`). On CPU a step multiplies
few rows by each weight matrix, which a BLAS call does poorly: the backend has inductor build
those products as loops of its own, and runs the larger ones on weights packed once for oneDNN
(`mmar/cpu_linears.py`).

Where the ideas come from (the code is written here): gpt-fast (pytorch-labs) compiles its
`decode_one_token` — model step and sampling — with `mode="reduce-overhead"` and clones the tokens
it keeps, since a CUDA graph's outputs are overwritten by its next replay; LlamaGen compiles the
same kind of step with guidance mixing inside. On CPU inductor builds C++ (a cold compile costs
tens of seconds), so compiling is the default on CUDA only.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
from typing import Any, Callable

import torch

from mmar import patterns
from mmar.cpu_linears import pack_weights, route_linears, small_linear
from mmar.model import MMAR

#: compiled graphs one step function may keep: batch sizes x cache spans x settings (dynamo's default is 8).
RECOMPILE_LIMIT = 64

#: causal steps one decode call runs, by token kind. A discrete draw is cheap: at batch 1 on CPU a
#: compiled call's fixed cost (dynamo's cache lookup, the wrapper: ~0.2 ms) is a third of a step, and
#: two steps a call halve it (~10% faster a 64-token image). A flow step's ODE solve outweighs it.
STEPS_PER_CALL = {"codes": 2, "vectors": 1}

#: feed(x (B, n, D), slots (n,), positions (B, n, 3), block (B, n) or (B, 1), visible) -> hidden (B, n, D): the
#: transformer with its cache (attending to the first `visible` slots; None: all), or the recomputing
#: `Sequence.feed` of the uncached (testing) path.
Feed = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int | None], torch.Tensor]


def at(values: torch.Tensor | None, i: int | slice) -> torch.Tensor | None:
    """Step i's entry (or a slice's entries) of a per-step schedule (guidance, holes), or None where
    there is none."""
    return None if values is None else values[i]


def draw(model: MMAR, name: str, options: dict[str, Any], hidden: torch.Tensor, guidance: torch.Tensor | None,
         noise: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
    """The head's draw: hidden (B, D), B = 2N when guided -> (N, *target_shape).

    `guidance` () is the step's guidance scale (None: unguided), `noise` the head's random numbers
    for N rows, `hole` (Q,) bool the delay-pattern levels that stay holes at this step."""
    drawn = model.heads[name].sample(hidden, guidance_scale=1.0 if guidance is None else guidance, noise=noise,
                                     **options)  # (N, *target_shape)
    return drawn if hole is None else drawn.masked_fill(hole, patterns.IGNORE)  # (N, Q)


def causal_step(model: MMAR, name: str, options: dict[str, Any], feed: Feed, copies: int, token: torch.Tensor,
                slot: torch.Tensor, span: int | None, position: torch.Tensor, guidance: torch.Tensor | None,
                noise: torch.Tensor, hole: torch.Tensor | None) -> torch.Tensor:
    """Feed the last drawn token (N, ...) at cache `slot` (1,) and `position` (B, 1, 3), attending to the
    first `span` cache slots (static: a graph per span, `Sequence.span`); draw the next (N, ...)."""
    tokens = torch.cat([token] * copies)  # (B, ...): both guidance halves get the drawn token
    x = model.embed_tokens(name, tokens)[:, None]  # (B, 1, D)
    block = slot.expand(x.shape[0], 1)  # (B, 1): its own block, causal
    hidden = feed(x, slot, position, block, span)[:, -1]  # (B, D)
    return draw(model, name, options, hidden, guidance, noise, hole)  # (N, ...)


def causal_steps(model: MMAR, name: str, options: dict[str, Any], feed: Feed, copies: int, token: torch.Tensor,
                 slots: torch.Tensor, span: int | None, positions: torch.Tensor, guidance: torch.Tensor | None,
                 noises: list[torch.Tensor], holes: torch.Tensor | None) -> list[torch.Tensor]:
    """`len(noises)` causal steps in a row, each feeding the token the last one drew: slots (S,),
    positions (B, S, 3), guidance (S,), holes (S, Q) per step -> the S drawn tokens (N, ...) each."""
    drawn = []
    for j, noise in enumerate(noises):
        token = causal_step(model, name, options, feed, copies, token, slots[j:j + 1], span, positions[:, j:j + 1],
                            at(guidance, j), noise, at(holes, j))
        drawn.append(token)
    return drawn


def scale_step(model: MMAR, name: str, options: dict[str, Any], feed: Feed, copies: int,
               teacher_inputs: Callable[[torch.Tensor], torch.Tensor], index: int, codes: torch.Tensor,
               slots: torch.Tensor, visible: int, positions: torch.Tensor, guidance: torch.Tensor | None,
               noise: torch.Tensor) -> torch.Tensor:
    """Next-scale: the codes of scales 1..k (N, P) -> those of scales 1..k+1 (N, P + h*w) (VAR).

    Scale k+1 (`index` k, 0-based) fills the cache `slots` (h*w,) at `positions` (B, h*w, 3) as one
    block and attends to the first `visible` cache slots (those written by then and, compiled, the
    unwritten rest of a span; unwritten slots are masked)."""
    size = slots.shape[0]
    inputs = teacher_inputs(codes)[:, -size:]  # (N, h*w, C): the running reconstruction at scale k+1's grid
    inputs = inputs.repeat(copies, 1, 1)  # (B, h*w, C)
    scale = torch.full(inputs.shape[:2], index, dtype=torch.long, device=inputs.device)  # (B, h*w)
    x = model.embed_tokens(name, inputs, scale)  # (B, h*w, D)
    block = slots[:1].expand(x.shape[0], 1)  # (B, 1): the whole scale is one block
    hidden = feed(x, slots, positions, block, visible)  # (B, h*w, D)
    drawn = draw(model, name, options, hidden.flatten(0, 1), guidance, noise)  # (N*h*w,)
    return torch.cat([codes, drawn.view(codes.shape[0], size)], dim=1)  # (N, P + h*w)


def scales_steps(model: MMAR, name: str, options: dict[str, Any], feed: Feed, copies: int,
                 teacher_inputs: Callable[[torch.Tensor], torch.Tensor], sizes: tuple[int, ...],
                 visible: tuple[int | None, ...], codes: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                 guidance: torch.Tensor | None, noises: list[torch.Tensor],
                 progress: Callable[[int], None] | None) -> torch.Tensor:
    """Next-scale, every scale after the first: scale 1's codes (N, 1) -> all codes (N, L).

    Scale k+1 has `sizes[k]` positions and attends to the first `visible[k-1]` cache slots (static:
    `Sequence.span` of the slots written by its end); `slots` (L-1,) and `positions` (B, L-1, 3) are
    those of scales 2.. in order; `guidance` (K,) and `noises` (one per scale after the first) are
    per scale. `progress(scales drawn)` after each (eager only: compiled, the whole loop is one graph)."""
    offset = 0
    for k, size in enumerate(sizes[1:], start=1):
        here = slice(offset, offset + size)
        offset += size
        codes = scale_step(model, name, options, feed, copies, teacher_inputs, k, codes, slots[here],
                           visible[k - 1], positions[:, here], at(guidance, k),
                           noises[k - 1])  # (N, 1 + offset)
        if progress is not None:
            progress(k + 1)
    return codes


def _inductor_cpp_wrapper(graph: torch.fx.GraphModule, inputs: list) -> Callable:
    """The CPU backend: a linear layer of few rows becomes `small_linear`, one of much work on a
    large weight `packed_linear` (in the traced graph, `cpu_linears.route_linears`, so that
    inductor's caches tell them apart), then inductor with its C++ wrapper, which calls the kernels
    without a Python wrapper in between (measured ~10% faster a step at batch 1, d=192, 4 layers,
    for a longer cold compile).

    A backend function rather than `torch.compile(options=...)`, which copies inductor's whole
    config each time it is called (~1.4 ms, twice a generation: 3-7% of a batch-1 image)."""
    from torch._inductor.compile_fx import compile_fx

    route_linears(graph)
    # Inductor caches a graph calling a function of ours only when told its cache key: here a hash
    # of the function's code, so that an edit to it compiles afresh.
    code = hashlib.sha256(marshal.dumps(small_linear.__code__)).hexdigest()
    cacheable = {f"{small_linear.__module__}.{small_linear.__name__}": code}
    return compile_fx(graph, inputs, config_patches={"cpp_wrapper": True, "unsafe_marked_cacheable_functions": cacheable})


def compile_dynamic(module: torch.nn.Module) -> Callable:
    """A forward whose shapes follow its inputs, compiled once for all of them (dynamic shapes): a
    prompt's prefill (`generate.Sequence`), whose length and count of real positions follow the
    prompts, and the recomputed sequence of the uncached reference path. On CPU with the backend
    of the decode steps (its linear layers on a large weight packed: their rows are symbolic)."""
    if next(module.parameters()).device.type == "cuda":
        return torch.compile(module, dynamic=True, fullgraph=True)
    pack_weights(module)
    return torch.compile(module, dynamic=True, fullgraph=True, backend=_inductor_cpp_wrapper)


class DecodeSteps:
    """The steps of one generation, bound to its model and settings: eager, or compiled as a whole.

    `compiled` uses `torch.compile(fullgraph=True, dynamic=False)`: a graph break is an error, not a
    silent eager island; on CUDA `mode="reduce-overhead"` replays each step as one CUDA graph, and
    `keep` clones what the loop keeps past the next replay.
    """

    def __init__(self, model: MMAR, name: str, options: dict[str, Any], guided: bool, feed: Feed,
                 compiled: bool, teacher_inputs: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.compiled = compiled
        self.per_call = STEPS_PER_CALL.get(model.layout.modalities[name].kind, 1)  # causal steps a call
        copies = 2 if guided else 1
        cuda_graphs = compiled and next(model.parameters()).device.type == "cuda"

        # Closures, not arguments: dynamo treats the settings as constants (guarded by value), so
        # `temperature == 0` or a top-k is decided while tracing, and one graph serves every step of a span.
        def first(hidden, guidance, noise, hole):
            return draw(model, name, options, hidden, guidance, noise, hole)

        def causal(token, slots, span, positions, guidance, noises, holes):
            return causal_steps(model, name, options, feed, copies, token, slots, span, positions, guidance, noises,
                                holes)

        def scales(sizes, visible, codes, slots, positions, guidance, noises, progress=None):
            return scales_steps(model, name, options, feed, copies, teacher_inputs, sizes, visible, codes, slots,
                                positions, guidance, noises, progress)

        self.first = first  # from the prefill's last hidden state: once per generation, eager
        self.causal, self.scales = (self.compile(causal, cuda_graphs), self.compile(scales, cuda_graphs)) \
            if compiled else (causal, scales)
        if compiled and not cuda_graphs:
            pack_weights(model)  # the CPU backend's `packed_linear` layers
        self.keep = (lambda tensor: tensor.clone()) if cuda_graphs else (lambda tensor: tensor)
        self.made: set = set()  # the kinds of compiled call this loop has made (`guards`)

    @staticmethod
    def compile(step: Callable, cuda_graphs: bool) -> Callable:
        if cuda_graphs:
            return torch.compile(step, mode="reduce-overhead", dynamic=False, fullgraph=True)
        return torch.compile(step, dynamic=False, fullgraph=True, backend=_inductor_cpp_wrapper)

    def guards(self, kind: Any) -> contextlib.AbstractContextManager:
        """Around a compiled call of a `kind` (a cache span and step count): the loop's first call of
        a kind has dynamo check its guards in full, compiling on first use; a later one passes the same
        kinds of values, so dynamo checks only the guards that tell its compiled graphs apart
        (`skip_guard_eval_unsafe`): this halves the lookup, ~0.2 ms a call on CPU at d=192."""
        if not self.compiled or kind not in self.made:
            self.made.add(kind)
            return contextlib.nullcontext()
        return torch.compiler.set_stance(skip_guard_eval_unsafe=True)

    def limits(self) -> contextlib.AbstractContextManager:
        """Around a compiled loop: room for a graph per cache span, batch size and setting (dynamo's config, scoped)."""
        if not self.compiled:
            return contextlib.nullcontext()
        return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
