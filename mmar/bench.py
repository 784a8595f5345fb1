"""`mmar bench`: generation and training speed, with every speed-up a ratio measured in one run.

Figures (random weights: speed does not depend on them):
- KV cache vs recomputing the full sequence, next-token, for a 64-token (32x32) and a 256-token image;
- images/s and transformer calls per image for each image head at batch 1 and 16;
- training tokens/s (fp32 on CPU; bf16 autocast and model FLOPs utilisation on CUDA);
- with the decode step compiled (on CUDA by default; `--compile` on CPU), for each head and batch:
  images/s compiled, timed interleaved with eager, the one-off warm-up (compiling), and the share
  of the decode loop's host time spent outside the compiled step (torch profiler): what still runs
  eagerly around it — guard checks, the noise draw, the Python loop — so a regression shows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from mmar.generate import SamplingConfig, generate
from mmar.layout import ModalitySpec
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.packing import Segment, pack
from mmar.pipeline import modality_spec
from mmar.transformer import TransformerConfig
from tokenizers_vq import TOKENIZERS

PROMPT = torch.tensor(list(b"a red circle at the top left"))
H100_BF16_DENSE_TFLOPS = 989.0


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    return _timed_together([fn], repeats, device)[0]


def _timed_together(fns, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each of `fns`, run interleaved (a, b, a, b, ...) so that drift in the
    machine's speed hits every contender alike: the ratios are measured in one run."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            record.append(time.perf_counter() - tic)
    return [sorted(record)[len(record) // 2] for record in times]


def _model(spec: ModalitySpec, head: str, backbone: TransformerConfig, device) -> MMAR:
    heads = {"text": HeadChoice("next_token"), "image": HeadChoice(head)}
    return MMAR(MMARConfig(backbone, [spec], heads)).to(device).eval()


def _image_tokenizer(head: str, device):
    """(tokenizer or None, spec) of each head's default 32x32 image tokenizer.

    The flow head's continuous tokenizer is diffusers' AutoencoderKL, but generation never runs it:
    its spec comes from the config alone, so the bench needs only the light stack (no diffusers)."""
    if head == "flow_matching":
        config = TOKENIZERS["image_kl"].Config()
        side = config.image_size // 2 ** (len(config.block_out_channels) - 1)
        return None, ModalitySpec("image", 0, 0, config.latent_channels, (1, side, side), token_shape=(side, side))
    name = {"next_token": "image_vq", "next_scale": "multiscale_vq"}[head]
    tokenizer = TOKENIZERS[name](TOKENIZERS[name].Config()).to(device).eval()
    return tokenizer, modality_spec("image", tokenizer, (3, 32, 32))


def has_cxx_compiler() -> bool:
    """torch.compile on CPU (inductor) builds C++: it needs $CXX or a compiler on PATH."""
    return bool(os.environ.get("CXX")) or any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def bench_cache(backbone: TransformerConfig, device, repeats: int, compile_step: bool = False) -> list[dict]:
    """Next-token, batch 1, no guidance: the cached decode step vs recomputing the whole sequence,
    both eager and (with `compile_step`) both compiled, each pair timed together."""
    rows = []
    for side in (8, 16):
        spec = ModalitySpec("image", 256, 1, 0, (1, side, side))
        model = _model(spec, "next_token", backbone, device)
        config = SamplingConfig(guidance_scale=1.0, seed=0)
        for compiled in (False, True) if compile_step else (False,):
            if compiled:
                torch.compiler.reset()  # every contender compiles afresh, within dynamo's recompile limit
            cached, recomputed = _timed_together(
                [lambda: generate(model, [PROMPT], "image", config, use_cache=True, compile_step=compiled),
                 lambda: generate(model, [PROMPT], "image", config, use_cache=False, compile_step=compiled)],
                repeats, device)
            tokens = side * side
            rows.append({"tokens": tokens, "compiled": compiled, "cached_tokens_per_s": round(tokens / cached, 1),
                         "recompute_tokens_per_s": round(tokens / recomputed, 1),
                         "speedup": round(recomputed / cached, 2)})
    return rows


def count_calls(modules: dict[str, torch.nn.Module], fn) -> dict[str, int]:
    """Run fn() once and count the forward calls of each module (sequential calls: a batch shares them)."""
    counts = dict.fromkeys(modules, 0)

    def counter(name):
        def hook(*_):
            counts[name] += 1
        return hook

    handles = [module.register_forward_hook(counter(name)) for name, module in modules.items()]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def outside_compiled_share(fn) -> float:
    """Run fn() once under the torch profiler -> the share of the decode loop's host time (the
    `mmar::fill` range `generate` marks) spent outside compiled regions (dynamo's
    "Torch-Compiled Region" ranges within it; the prompt's compiled prefill runs before it): 0 when
    the loop does nothing but call the compiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], acc_events=True) as profiler:
        fn()
    events = profiler.events()
    fills = [event for event in events if event.name == "mmar::fill"]
    loop = sum(fill.cpu_time_total for fill in fills)
    inside = sum(event.cpu_time_total for event in events if event.name.startswith("Torch-Compiled Region")
                 and any(fill.time_range.start <= event.time_range.start and event.time_range.end <= fill.time_range.end
                         for fill in fills))
    return round(max(0.0, 1.0 - inside / loop), 3) if loop else float("nan")


def bench_heads(backbone: TransformerConfig, device, repeats: int, batches=(1, 16), compile_step=False,
                on_row=None) -> list[dict]:
    """Per head and batch: eager images/s; with `compile_step` also compiled images/s (timed
    interleaved with eager), the warm-up seconds and the share of the loop outside the compiled step.
    `on_row(row)` sees each row as soon as it is measured (a compiled row takes minutes on CPU)."""
    rows = []
    for head in ("next_token", "next_scale", "flow_matching"):
        if compile_step:
            torch.compiler.reset()  # every head compiles afresh: its warm-up is measured from cold
        tokenizer, spec = _image_tokenizer(head, device)
        model = _model(spec, head, backbone, device)
        teacher = getattr(tokenizer, "teacher_inputs", None)
        config = SamplingConfig(guidance_scale=3.0, seed=0)
        counted = {"transformer": model.transformer}
        if hasattr(model.heads["image"], "net"):
            counted["velocity_net"] = model.heads["image"].net
        calls = count_calls(counted, lambda: generate(model, [PROMPT], "image", config, teacher_inputs=teacher,
                                                      compile_step=False))
        for batch in batches:
            prompts = [PROMPT] * batch

            def run(compiled: bool, prompts=prompts) -> None:
                generate(model, prompts, "image", config, teacher_inputs=teacher, compile_step=compiled)

            row = {"head": head, "batch": batch, "tokens_per_image": spec.num_tokens,
                   **{f"{name}_calls_per_image": count for name, count in calls.items()}}
            if compile_step:
                tic = time.perf_counter()
                run(True)  # the first call compiles
                warmup = time.perf_counter() - tic
                eager, compiled = _timed_together([lambda: run(False), lambda: run(True)], repeats, device)
                row.update(images_per_s=round(batch / eager, 2), compiled_images_per_s=round(batch / compiled, 2),
                           compiled_vs_eager=round(eager / compiled, 2), warmup_s=round(warmup - compiled, 1),
                           outside_compiled_share=outside_compiled_share(lambda: run(True)))
            else:
                row["images_per_s"] = round(batch / _timed(lambda: run(False), repeats, device), 2)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def bench_training(backbone: TransformerConfig, device, steps: int, batch: int = 32) -> dict:
    spec = ModalitySpec("image", 256, 1, 0, (1, 8, 8))
    model = _model(spec, "next_token", backbone, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    samples = [[Segment("text", PROMPT), Segment("image", torch.randint(256, (8, 8), generator=generator))]] * batch
    data = pack(samples, model.layout).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(data)
        loss = sum(o.loss_sum / o.count for o in outputs.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _timed(step, steps, device)
    tokens = data.ids.numel()
    parameters = sum(p.numel() for p in model.transformer.parameters())
    flops = 6 * parameters * tokens + 12 * backbone.num_layers * backbone.dim * data.ids.shape[1] * tokens
    result = {"batch": batch, "tokens_per_step": tokens, "tokens_per_s": round(tokens / seconds, 1),
              "precision": "bf16 autocast" if dtype else "fp32", "transformer_parameters": parameters}
    if device.type == "cuda":
        result["mfu_vs_989_tflops"] = round(flops / seconds / (H100_BF16_DENSE_TFLOPS * 1e12), 4)
    return result


def run_bench(quick: bool = False, device: str | None = None, out: str | None = None,
              compile_step: bool | None = None) -> dict:
    """Print and return every figure. `compile_step` adds the compiled-decode figures (default: on CUDA
    only; on CPU the inductor C++ compile costs tens of seconds per head and batch size)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    compile_step = device.type == "cuda" if compile_step is None else compile_step
    if compile_step and device.type == "cpu" and not has_cxx_compiler():
        raise ValueError("--compile on CPU needs a C++ compiler for torch.compile (inductor): install one "
                         "(e.g. apt install g++) or set $CXX, or leave --compile out")
    torch.manual_seed(0)
    repeats = 1 if quick else 5
    backbone = TransformerConfig(dim=192, num_layers=4, num_heads=6, num_kv_heads=2, max_len=512)
    results = {"device": str(device), "threads": torch.get_num_threads(), "backbone": "d=192, 4 layers, 6 heads (quickstart)"}
    print(f"mmar bench on {device} ({results['threads']} threads), backbone {results['backbone']}")
    results["kv_cache"] = bench_cache(backbone, device, repeats, compile_step)
    for row in results["kv_cache"]:
        mode = "compiled" if row["compiled"] else "eager"
        print(f"  next-token, {row['tokens']:>3} tokens, batch 1, {mode:<8}: cache {row['cached_tokens_per_s']:>8} tok/s, "
              f"recompute {row['recompute_tokens_per_s']:>8} tok/s, speed-up {row['speedup']}x")
    batches = (1, 4) if quick else (1, 16)
    if compile_step:
        print("  compiling each head's decode step on first use (warm-up; tens of seconds each on CPU) ...", flush=True)

    def print_row(row: dict) -> None:
        velocity = f", {row['velocity_net_calls_per_image']} velocity-net calls" if "velocity_net_calls_per_image" in row else ""
        print(f"  {row['head']:<14} batch {row['batch']:>2}: {row['images_per_s']:>7} images/s eager "
              f"({row['transformer_calls_per_image']} transformer calls/image{velocity}, CFG 3)", flush=True)
        if compile_step:
            print(f"  {'':<14}           {row['compiled_images_per_s']:>7} images/s compiled ({row['compiled_vs_eager']}x "
                  f"eager), {row['outside_compiled_share']:.0%} of the loop outside the compiled step, "
                  f"warm-up {row['warmup_s']} s", flush=True)

    results["heads"] = bench_heads(backbone, device, repeats, batches=batches, compile_step=compile_step,
                                   on_row=print_row)
    results["training"] = bench_training(backbone, device, 2 if quick else 5)
    print(f"  training ({results['training']['precision']}, batch {results['training']['batch']}): "
          f"{results['training']['tokens_per_s']} tokens/s" +
          (f", MFU {results['training']['mfu_vs_989_tflops']:.1%} of 989 TFLOP/s" if "mfu_vs_989_tflops" in results["training"] else ""))
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results
