"""The autoregressive training loop: one shared transformer, any head, on pre-tokenized data.

Top to bottom: encode the data once with the frozen tokenizer, build the MMAR model from the
tokenizer's token stream, then for every step: take this rank's share of a seeded permutation,
drop captions for classifier-free guidance, pack, sum each head's loss over micro-batches and
divide by the global target count (over micro-batches and ranks), clip, skip non-finite steps,
update EMA, log, sample, checkpoint. The pipeline is exported with the EMA weights.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmar.config import save_json
from mmar.data import make_source
from mmar.data.tokenized import TokenizedDataset, encode_dataset
from mmar.generate import SamplingConfig
from mmar.images import captioned_grid, save_atomic
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.packing import Segment, pack
from mmar.pipeline import Pipeline, modality_spec
from mmar.transformer import TransformerConfig
from tokenizers_vq import TOKENIZERS, load_tokenizer
from trainers.checkpoint import load_latest, save_checkpoint
from trainers.common import (EMA, DataConfig, DataOrder, MetricsLog, NonFiniteGuard, OptimConfig, RunConfig,
                             learning_rate, make_accelerator, make_optimizer, rank_slice, record_ranks,
                             restore, seeded_generator)

logger = logging.getLogger(__name__)

SAMPLE_PROMPTS = (
    "a red circle at the top left", "a green square at the bottom right", "a blue triangle at the center",
    "a yellow circle at the bottom left", "a magenta square at the top right", "a cyan triangle at the top left",
    "a white circle at the center", "a orange square at the bottom left",
)


@dataclass
class ARTrainConfig:
    out: str = "runs/ar"
    tokenizer: str = ""  # folder of a trained tokenizer (its `tokenizer/` export)
    data: DataConfig = field(default_factory=DataConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    head: str = "next_token"  # head of the image modality: next_token | next_scale | flow_matching
    head_config: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=2000, batch_size=32, learning_rate=2e-3))
    run: RunConfig = field(default_factory=RunConfig)
    text_loss_weight: float = 0.1
    caption_dropout: float = 0.1  # probability of training on an empty caption (the CFG branch)
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    sample_guidance: float = 3.0


def model_config(config: ARTrainConfig, tokenizer) -> MMARConfig:
    spec = modality_spec("image", tokenizer, (3, config.data.size, config.data.size))
    heads = {"text": HeadChoice("next_token"), "image": HeadChoice(config.head, dict(config.head_config))}
    return MMARConfig(config.model, [spec], heads)


def make_samples(tokens: torch.Tensor, captions: list[bytes | torch.Tensor], teacher_inputs: torch.Tensor | None) -> list:
    """tokens (b, ...) + caption bytes -> [[text, image], ...] segments."""
    return [[Segment("text", caption), Segment("image", tokens[i], None if teacher_inputs is None else teacher_inputs[i])]
            for i, caption in enumerate(captions)]


def train_ar(config: ARTrainConfig, resume: bool = False) -> Path:
    """Train; returns the exported pipeline folder `<out>/pipeline`."""
    accelerator = make_accelerator(config.run)
    out, main, device = Path(config.out), accelerator.is_main_process, accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    if not config.tokenizer:
        raise ValueError("set the trained tokenizer folder: --tokenizer runs/.../tokenizer")
    tokenizer = load_tokenizer(config.tokenizer).to(device).requires_grad_(False)
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(config, out / "config.json")
        if not (out / "tokens" / "index.json").is_file():
            source = make_source(config.data.source, size=config.data.size, num_items=config.data.num_items,
                                 seed=config.data.seed, path=config.data.path)
            encode_dataset(tokenizer, source, out / "tokens", device=device, progress=config.run.progress)
    accelerator.wait_for_everyone()
    data = TokenizedDataset(out / "tokens")
    caption_bytes = [text.encode(c) for c in data.captions]

    torch.manual_seed(config.run.seed)  # the initial weights; training randomness comes from seeded generators
    model = MMAR(model_config(config, tokenizer))
    spec = model.layout.modalities["image"]
    needed = 3 + max(len(c) for c in caption_bytes) + spec.num_tokens + 1
    if needed > config.model.max_len:
        raise ValueError(f"samples need {needed} positions but model.max_len is {config.model.max_len}")
    optimizer = make_optimizer(model, config.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    ema = EMA(raw, config.optim.ema_beta)
    order = DataOrder(len(data), config.run.seed)
    start = 0
    if resume and (state := load_latest(out / "checkpoints")):
        start = restore(state, raw, ema, optimizer, order, device)
        logger.info("resumed from %s at step %d", state["path"], start)
    weights = {"text": config.text_loss_weight, "image": 1.0}
    log, guard = MetricsLog(out / "metrics.jsonl", main), NonFiniteGuard(config.optim.max_nonfinite)
    bar = tqdm(range(start, config.optim.steps), initial=start, total=config.optim.steps, desc=f"train {config.head}",
               disable=not (main and config.run.progress))
    tic, tokens_seen = time.perf_counter(), 0
    done = start
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.optim)
        generator = seeded_generator(config.run.seed, step, rank, device)
        cpu_generator = seeded_generator(config.run.seed, step, rank)
        batches = []
        for indices in rank_slice(order.take(config.optim.batch_size), rank, world, config.optim.grad_accum):
            tokens = data.tokens[indices].to(device)  # (b, ...)
            drop = torch.rand(len(indices), generator=cpu_generator) < config.caption_dropout  # (b,)
            captions = [torch.zeros(0, dtype=torch.long) if d else caption_bytes[j] for j, d in zip(indices, drop.tolist())]
            inputs = tokenizer.teacher_inputs(tokens).float().cpu() if spec.kind == "scales" else None
            batches.append(pack(make_samples(tokens.cpu(), captions, inputs), raw.layout).to(device))
        # The global number of targets per head, over micro-batches and ranks, normalises every loss.
        counts = torch.tensor([[len(b.targets[h].index) if h in b.targets else 0 for h in weights] for b in batches],
                              device=device).sum(0)  # (num_heads,)
        counts = accelerator.reduce(counts, reduction="sum").clamp_min(1)
        sums = torch.zeros(len(weights), device=device)  # summed loss per head, for logging
        correct = torch.zeros(len(weights), device=device)
        for i, batch in enumerate(batches):
            sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
            with sync:
                with accelerator.autocast():
                    outputs = model(batch, generator)
                loss = sum(weights[h] * outputs[h].loss_sum / counts[k] for k, h in enumerate(weights) if h in outputs)
                accelerator.backward(loss * world)  # DDP averages gradients over ranks; undo it
            for k, h in enumerate(weights):
                if h in outputs:
                    sums[k] += outputs[h].loss_sum.detach().float()
                    correct[k] += outputs[h].metrics.get("accuracy", torch.zeros((), device=device)).detach().float()
            tokens_seen += batch.ids.numel() * world
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.clip)
        if guard.check(grad_norm, step):
            optimizer.step()
            ema.update(raw, step)
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.run.log_every == 0 or done == config.optim.steps:
            sums, correct = accelerator.reduce(sums, reduction="sum"), accelerator.reduce(correct, reduction="sum")
            if main:
                values = {f"loss/{h}": float(sums[k] / counts[k]) for k, h in enumerate(weights)}
                if spec.kind != "vectors":
                    values["accuracy/image"] = float(correct[1] / counts[1])
                values.update(grad_norm=float(grad_norm), lr=optimizer.param_groups[0]["lr"],
                              tokens_per_s=tokens_seen / (time.perf_counter() - tic))
                log.write(done, values)
                bar.set_postfix({"loss": f"{values['loss/image']:.3f}"})
        if main and config.run.sample_every and (done % config.run.sample_every == 0 or done == config.optim.steps):
            save_atomic(sample_grid(ema_pipeline(config, tokenizer, ema, device), config), out / "samples" / f"step-{done:07d}.png")
        if done % config.run.checkpoint_every == 0 or done == config.optim.steps:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(out / "checkpoints", done, model=raw.state_dict(), ema=ema.shadow,
                                optimizer=optimizer.state_dict(), trainer={"data_order": order.state_dict()},
                                keep=config.run.keep_checkpoints)
        if config.run.stop_at is not None and done >= config.run.stop_at:
            break
    accelerator.wait_for_everyone()
    record_ranks(accelerator, raw, out / "ranks.json")
    if config.run.stop_at is not None and done < config.optim.steps:
        return out / "checkpoints"
    export = out / "pipeline"
    if main:
        ema_pipeline(config, tokenizer, ema, "cpu").save_pretrained(export)
    accelerator.wait_for_everyone()
    return export


def ema_pipeline(config: ARTrainConfig, tokenizer, ema: EMA, device) -> Pipeline:
    """A pipeline holding a fresh model with the EMA weights (the training model is untouched)."""
    model = MMAR(model_config(config, tokenizer))
    ema.copy_to(model)
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    return Pipeline(model.eval(), {"text": text, "image": tokenizer}).to(device)


def sample_grid(pipeline: Pipeline, config: ARTrainConfig):
    images = pipeline(list(config.sample_prompts), guidance_scale=config.sample_guidance, seed=config.run.seed)
    return captioned_grid(images, list(config.sample_prompts), columns=len(config.sample_prompts))
