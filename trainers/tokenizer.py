"""The tokenizer training loop (one accelerate loop for every registered tokenizer).

Reads raw media from a data source, minimises `tokenizer.training_loss`, keeps EMA weights,
checkpoints crash-safely, and exports the EMA tokenizer (calibrated) with a reconstruction report.
The seeded validation split (`data.validation`, `mmar.data.split`) never trains: every
`run.validate_every` steps the EMA weights' loss on a fixed batch of it is logged as `validation/*`,
the weights with the lowest are kept in `<out>/best/` and exported (`export="best"`), and the
report is measured on all of the split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmar.config import from_dict, save_json, validate
from mmar.data import make_source, source_class, source_data_shape
from mmar.data.split import validation_split
from mmar.evaluation.reconstruction import reconstruction_metrics, reconstruction_grid
from mmar.images import save_atomic
from mmar.lock import folder_lock
from tokenizers_vq import TOKENIZERS, load_tokenizer
from trainers.checkpoint import load_latest, save_checkpoint
from trainers.divergence import DivergenceGuard, optimizer_tensors
from trainers.validation import BestCheckpoint
from trainers.common import (EMA, DataConfig, DataOrder, MetricsLog, OptimConfig, RunConfig,
                             learning_rate, make_accelerator, make_optimizer, rank_slice, record_ranks,
                             restore, seeded_generator)

logger = logging.getLogger(__name__)


@dataclass
class TokenizerTrainConfig:
    out: str = "runs/tokenizer"
    tokenizer: str = "image_vq"  # key of tokenizers_vq.TOKENIZERS
    tokenizer_config: dict[str, Any] = field(default_factory=dict)  # fields of that tokenizer's Config
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=600, batch_size=64, learning_rate=2e-3,
                                                                    warmup_steps=20, weight_decay=0.0, beta2=0.99))
    run: RunConfig = field(default_factory=lambda: RunConfig(sample_every=200, checkpoint_every=200))
    validation_batch: int = 64  # held-out items in each validation-loss measurement (the report uses them all)
    export: str = "best"  # the exported weights: "best" (lowest validation loss, kept in <out>/best) or "last"
    # Video tokenizers: the first `image_steps` of optim.steps train on single frames of the clips,
    # `image_batch_size` a step (one-frame clips: an image), then on whole clips. The spatial layers
    # learn at an image tokenizer's pace first, and the clips then only teach the motion.
    image_steps: int = 0
    image_batch_size: int = 64

    LIMITS = {"validation_batch": "[1, inf)", "image_steps": "[0, inf)", "image_batch_size": "[1, inf)"}

    def check(self) -> None:
        if self.export not in ("best", "last"):
            raise ValueError(f'export must be "best" or "last", got {self.export!r}')
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer {self.tokenizer!r} is unknown; known: {', '.join(sorted(TOKENIZERS))}")
        try:
            tokenizer_config(self)
        except (ValueError, TypeError) as error:
            raise ValueError(f"tokenizer_config: {error}") from error
        if self.image_steps and TOKENIZERS[self.tokenizer].modality != "video":
            raise ValueError(f"image_steps trains a video tokenizer on single frames; {self.tokenizer} is not one "
                             "(set image_steps=0)")
        if self.image_steps >= self.optim.steps:
            raise ValueError(f"image_steps ({self.image_steps}) must leave some of optim.steps ({self.optim.steps}) "
                             "for whole clips")


def tokenizer_config(config: TokenizerTrainConfig) -> Any:
    """The tokenizer's own Config, type-checked and validated. What the data fixes comes first (an image
    tokenizer's image_size from the item shape, an audio codec's sample_rate), then tokenizer_config."""
    cls = TOKENIZERS[config.tokenizer]
    source_modality = source_class(config.data.source).modality
    if source_modality != cls.modality:
        raise ValueError(f"the {config.data.source!r} source yields {source_modality}, the {config.tokenizer} "
                         f"tokenizer reads {cls.modality}: pick a {cls.modality} source (--set data.source=...)")
    from_data = cls.data_settings(source_data_shape(**dataclasses.asdict(config.data)))
    if "sample_rate" in cls.Config.__dataclass_fields__:
        from_data["sample_rate"] = config.data.sample_rate
    return validate(from_dict(cls.Config, {**from_data, **config.tokenizer_config}))


def build_tokenizer(config: TokenizerTrainConfig):
    validate(config)
    return TOKENIZERS[config.tokenizer](tokenizer_config(config))


def train_tokenizer(config: TokenizerTrainConfig, resume: bool = False) -> Path:
    """Train, then write `<out>/tokenizer/` (EMA weights) and `<out>/report.json`. Returns the tokenizer folder.

    The run holds `<out>`'s lock throughout."""
    validate(config)
    accelerator = make_accelerator(config.run)
    with folder_lock(config.out) if accelerator.is_main_process else contextlib.nullcontext():
        return _train_tokenizer(config, accelerator, resume)


def _train_tokenizer(config: TokenizerTrainConfig, accelerator, resume: bool) -> Path:
    out, main, device = Path(config.out), accelerator.is_main_process, accelerator.device
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(config, out / "config.json")
    source = make_source(**dataclasses.asdict(config.data))
    train_items, held_out_items = validation_split(len(source), config.data.validation, config.data.seed)
    train_items = train_items.tolist()
    logger.info("tokenizer: %d training items, %d held out for validation", len(train_items), len(held_out_items))
    validation_items = held_out_items[:config.validation_batch].tolist()
    torch.manual_seed(config.run.seed)  # the initial weights; training randomness comes from seeded generators
    tokenizer = build_tokenizer(config)
    optimizer = make_optimizer(tokenizer, config.optim)
    tokenizer, optimizer = accelerator.prepare(tokenizer, optimizer)
    raw = accelerator.unwrap_model(tokenizer)
    ema = EMA(raw, config.optim.ema_beta)
    order = DataOrder(len(train_items), config.run.seed)
    start = 0
    if resume and (state := load_latest(out / "checkpoints",
                                        lambda state: restore(state, raw, ema, optimizer, order, device))):
        start = state["restored"]
        logger.info("resumed from %s at step %d", state["path"], start)
    log = MetricsLog(out / "metrics.jsonl", main)
    best = BestCheckpoint(out, resume)
    guard = DivergenceGuard(config.optim.max_nonfinite, config.optim.loss_spike_factor, out / "checkpoints")
    bar = tqdm(range(start, config.optim.steps), initial=start, total=config.optim.steps, desc="tokenizer",
               disable=not (main and config.run.progress))
    tic = time.perf_counter()
    done, checkpoint_due = start, False
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.optim)
        generator = seeded_generator(config.run.seed, step, accelerator.process_index, device)
        on_frames = step < config.image_steps
        if step == config.image_steps and step:
            guard.new_phase()  # a clip's loss is several times a frame's: not a spike
        micro_batches = rank_slice(order.take(config.image_batch_size if on_frames else config.optim.batch_size),
                                   accelerator.process_index, accelerator.num_processes, config.optim.grad_accum)
        metrics: dict[str, float] = {}
        step_loss = torch.zeros((), device=device)
        for i, indices in enumerate(micro_batches):
            items = torch.stack([source[train_items[j]][0] for j in indices]).to(device)  # (b, *data_shape)
            if on_frames:
                items = one_frame_each(items, generator)  # (b, 1, C, H, W)
            sync = accelerator.no_sync(tokenizer) if i < len(micro_batches) - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                result = tokenizer(items, generator)  # forward = training_loss, through DDP when distributed
                accelerator.backward(result.loss / len(micro_batches))
            step_loss += result.loss.detach().float() / len(micro_batches)
            for key, value in result.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + float(value) / len(micro_batches)
        grad_norm = accelerator.clip_grad_norm_(tokenizer.parameters(), config.optim.clip)
        if guard.allow(step, grad_norm, accelerator.reduce(step_loss, reduction="mean")):
            optimizer.step()
            ema.update(raw, step)
            guard.check_state(step, {"weights": raw.parameters(), "EMA": ema.shadow.values(),
                                     "optimizer state": optimizer_tensors(optimizer)})
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if main and (done % config.run.log_every == 0 or done == config.optim.steps):
            rate = config.optim.batch_size * (done - start) / (time.perf_counter() - tic)
            log.write(done, {**metrics, "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"],
                             "images_per_s": rate})
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(metrics.items())[:3]})
        if main and validation_items and (done % config.run.validate_every == 0 or done == config.optim.steps):
            values = validation_metrics(config, ema, [source[j][0] for j in validation_items], device)
            log.write(done, values)
            best.offer(done, values, lambda folder: ema_tokenizer(config, ema, device).save_pretrained(folder))
        checkpoint_due |= done % config.run.checkpoint_every == 0 or done == config.optim.steps
        if checkpoint_due and guard.healthy:  # never a checkpoint of a state whose last step was skipped
            checkpoint_due = False
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
    export = out / "tokenizer"
    if main:
        final = ema_tokenizer(config, ema, device)
        if config.export == "best" and best.exists:
            logger.info("tokenizer: exporting the best validation step %d (loss %.4g)", best.step, best.loss)
            final = load_tokenizer(best.folder).to(device)
        if not len(held_out_items):
            raise ValueError(f"data.validation is {config.data.validation}: nothing is held out to report on; "
                             "set it above 0 (and use at least 5 items)")
        held_out = torch.stack([source[j][0] for j in held_out_items.tolist()])  # (E, *data_shape)
        final.calibrate(torch.stack([source[j][0] for j in train_items[:512]]).to(device))
        final.save_pretrained(export)
        report = reconstruction_metrics(final, held_out.to(device))
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        save_atomic(reconstruction_grid(final, held_out[:16].to(device)), out / "reconstructions.png")
        logger.info("tokenizer: %s", report)
    accelerator.wait_for_everyone()
    return export



def one_frame_each(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """clips (b, F, C, H, W) -> one frame of each, drawn with `generator`, as a one-frame clip (b, 1, C, H, W)."""
    frames = torch.randint(clips.shape[1], (clips.shape[0],), generator=generator, device=generator.device)  # (b,)
    return clips[torch.arange(clips.shape[0], device=clips.device), frames.to(clips.device)][:, None]


def ema_tokenizer(config: TokenizerTrainConfig, ema: EMA, device):
    """A fresh tokenizer holding the EMA weights, in eval mode (the training one is untouched)."""
    model = build_tokenizer(config).to(device).eval()
    ema.copy_to(model)
    return model


@torch.no_grad()
def validation_metrics(config: TokenizerTrainConfig, ema: EMA, items: list[torch.Tensor], device) -> dict[str, float]:
    """The EMA weights' training loss and metrics on held-out items (eval mode) -> {"validation/<name>": value}."""
    model = ema_tokenizer(config, ema, device)
    result = model.training_loss(torch.stack(items).to(device), seeded_generator(config.run.seed, 0, 0, device))
    return {"validation/loss": float(result.loss), **{f"validation/{k}": float(v) for k, v in result.metrics.items()}}
