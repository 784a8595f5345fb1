"""The autoregressive training loop: one shared transformer over a mixture of modality runs.

Top to bottom: load every run's frozen tokenizer and check its head can predict its tokens, encode
each data source once (cached by the tokenizer's SHA-256 and the data config), build ONE MMAR model
over all of them, then for every step: draw this rank's share of the seeded mixture order
(modality, task, item), drop captions for classifier-free guidance, lay every sample out as its
task says (generate: text then the modality; caption: the modality then its text), pack one
micro-batch per drawn modality (rows pad to their own length), sum each head's loss over micro-batches and divide by the global target count (over
micro-batches and ranks), weight per head, clip, skip non-finite steps, update EMA, log, sample,
checkpoint. Every run's seeded validation split never trains: every `run.validate_every` steps the
EMA weights are measured on it (trainers/validation.py), the best are kept in `<out>/best/`, and
memorising is reported in one line. The pipeline is exported with the EMA weights of the best
validation step (`export="best"`) or the last one, and with the sampling settings that scored best
on the held-out prompts (trainers/tune.py) as its defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmar import patterns
from mmar.config import read_json, save_json, validate
from mmar.data import DATA_SOURCES, PROCEDURAL_SOURCES, make_source, source_data_shape
from mmar.data.split import validation_split
from mmar.data.tokenized import TokenizedDataset, encode_dataset, stale_reason, tokens_identity
from mmar.images import captioned_grid, save_atomic
from mmar.lock import folder_lock
from mmar.model import MMAR, HeadChoice, MMARConfig, check_head
from mmar.packing import Segment, pack
from mmar.pipeline import Pipeline, modality_spec
from mmar.transformer import TransformerConfig
from tokenizers_vq import TOKENIZERS, load_tokenizer
from trainers.checkpoint import list_checkpoints, load_latest, save_checkpoint
from trainers.common import (EMA, DataConfig, MetricsLog, OptimConfig, RunConfig, learning_rate,
                             make_accelerator, make_optimizer, rank_slice, record_ranks, restore, seeded_generator)
from trainers.divergence import DivergenceGuard, optimizer_tensors
from trainers.mixture import MixtureOrder
from trainers.tune import TuneConfig, tune_sampling
from trainers.validation import BestCheckpoint, Validator, memorising

logger = logging.getLogger(__name__)
EMPTY = torch.zeros(0, dtype=torch.long)


@dataclass
class ModalityRun:
    """One modality of a training mixture: a trained tokenizer, its data and the head that predicts it."""

    tokenizer: str = ""  # folder of a trained tokenizer (its `tokenizer/` export)
    data: DataConfig = field(default_factory=DataConfig)
    head: str = "next_token"  # key of heads.HEADS; must serve the tokenizer's kind of tokens
    head_config: dict[str, Any] = field(default_factory=dict)
    loss_weight: float = 1.0  # weight of this head's (count-normalised) loss
    mix_weight: float = 1.0  # share of the draws, relative to the other runs
    caption_weight: float = 0.0  # fraction of this run's draws that are caption tasks (media, then text)
    pattern: str = "delay"  # codebook pattern of multi-codebook codes (mmar/patterns.py: delay | flat | parallel)
    sample_prompts: tuple[str, ...] = ()  # for sample grids; empty: the data source's own captions

    LIMITS = {"loss_weight": "[0, 1000]", "mix_weight": "(0, 1000]", "caption_weight": "[0, 1]"}

    def check(self) -> None:
        HeadChoice(self.head, dict(self.head_config)).check()
        patterns.num_steps(self.pattern, 1, 1)  # an unknown pattern is an error here


@dataclass
class ARTrainConfig:
    out: str = "runs/ar"
    modalities: dict[str, ModalityRun] = field(default_factory=dict)  # name -> run (the name is the pipeline's)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=2000, batch_size=32, learning_rate=2e-3))
    run: RunConfig = field(default_factory=RunConfig)
    text_loss_weight: float = 0.1
    caption_dropout: float = 0.1  # probability of training on an empty caption (the CFG branch)
    num_sample_prompts: int = 8  # per modality, in sample grids
    sample_guidance: float = 3.0
    export: str = "best"  # the exported weights: "best" (lowest validation loss) or "last"
    tune: TuneConfig = field(default_factory=TuneConfig)  # the sampling sweep that sets the pipeline's defaults

    LIMITS = {"text_loss_weight": "[0, 1000]", "caption_dropout": "[0, 1)", "num_sample_prompts": "[1, 64]",
              "sample_guidance": "[0, 1000]"}

    def check(self) -> None:
        if self.export not in ("best", "last"):
            raise ValueError(f'export must be "best" or "last", got {self.export!r}')
        if not self.modalities:
            raise ValueError("modalities is empty: give at least one run (--tokenizer DIR, or a config's "
                             '"modalities": {"image": {"tokenizer": DIR, ...}})')


def single_run(out: str, tokenizer: str, head: str, overrides: list[str] = ()) -> tuple[ARTrainConfig, list[str]]:
    """The one-modality shorthand (`mmar train --tokenizer X --head Y`): a mixture of one run.

    The run is named after the tokenizer's medium ("image"); `--set` keys that name a run field
    (`data.source=...`, `head_config.x=...`, `caption_weight=...`) are that run's, spelled short.
    """
    name = tokenizer_medium(tokenizer)
    run_fields = {f.name for f in dataclasses.fields(ModalityRun)}
    rewritten = [f"modalities.{name}.{item}" if item.split("=", 1)[0].split(".")[0].strip() in run_fields else item
                 for item in overrides]
    # The medium's built-in procedural source is the default (`--set data.source=...` picks another).
    data = DataConfig(source=PROCEDURAL_SOURCES.get(name, DataConfig.source))
    return ARTrainConfig(out=out, modalities={name: ModalityRun(tokenizer=tokenizer, head=head, data=data)}), rewritten


def tokenizer_medium(directory: str) -> str:
    """The medium a tokenizer folder encodes ("image", ...), read from its config without loading weights."""
    import json

    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no tokenizer config at {config_path}: is {directory} a trained tokenizer folder?")
    name = json.loads(config_path.read_text()).get("class")
    if name not in TOKENIZERS:
        raise ValueError(f"{config_path}: unknown tokenizer class {name!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name].modality


def model_config(config: ARTrainConfig, tokenizers: dict) -> MMARConfig:
    """The MMAR config of a mixture: one ModalitySpec and head per run, plus the text head."""
    specs, heads = [], {"text": HeadChoice("next_token")}
    for name, run in config.modalities.items():
        tokenizer = tokenizers[name]
        data_shape = source_data_shape(**dataclasses.asdict(run.data))
        spec = modality_spec(name, tokenizer, data_shape, run.pattern)
        check_head(run.head, spec)
        specs.append(spec)
        heads[name] = HeadChoice(run.head, dict(run.head_config))
    return MMARConfig(config.model, specs, heads)


def load_tokenizers(config: ARTrainConfig, device) -> dict:
    """Every run's frozen tokenizer, each checked against its data source and head before anything is encoded."""
    if not config.modalities:
        raise ValueError("no modalities to train: pass --tokenizer DIR (one modality) or --config FILE (a mixture)")
    tokenizers = {}
    for name, run in config.modalities.items():
        if not run.tokenizer:
            raise ValueError(f"modalities.{name}.tokenizer is empty: set the trained tokenizer folder")
        if run.data.source not in DATA_SOURCES:
            raise ValueError(f"modalities.{name}.data.source {run.data.source!r} is unknown; known: {', '.join(DATA_SOURCES)}")
        tokenizer = load_tokenizer(run.tokenizer)
        if DATA_SOURCES[run.data.source].modality != tokenizer.modality:
            raise ValueError(f"modalities.{name}: the {run.data.source!r} source yields "
                             f"{DATA_SOURCES[run.data.source].modality}, the tokenizer reads {tokenizer.modality}")
        tokenizers[name] = tokenizer.to(device).requires_grad_(False)
    model_config(config, tokenizers)  # every head/tokenizer pairing is checked here, before encoding
    return tokenizers


def encode_runs(config: ARTrainConfig, tokenizers: dict, out: Path, device) -> None:
    """Encode each run's data once into `<out>/tokens/<name>`; stale tokens are re-encoded, with a log line."""
    for name, run in config.modalities.items():
        directory = out / "tokens" / name
        # the held-out size picks items, not codes: changing it re-uses the tokens
        identity = tokens_identity(run.tokenizer, {k: v for k, v in dataclasses.asdict(run.data).items()
                                                   if k != "validation"})
        reason = stale_reason(directory, identity)
        if reason is None:
            continue
        if (directory / "index.json").is_file():
            logger.warning("re-encoding %s: %s", directory, reason)
        source = make_source(**dataclasses.asdict(run.data))
        encode_dataset(tokenizers[name], source, directory, device=device, progress=config.run.progress,
                       identity=identity)


def source_prompts(run: ModalityRun, captions: list[str], count: int) -> list[str]:
    """Sample-grid prompts of a run: its own, else the first `count` distinct captions of its data."""
    return list(run.sample_prompts) if run.sample_prompts else list(dict.fromkeys(captions))[:count]


def by_modality(draws: list) -> list[list]:
    """Split draws into one group per modality, in first-drawn order (a one-modality share stays whole)."""
    groups: dict[str, list] = {}
    for draw in draws:
        groups.setdefault(draw.modality, []).append(draw)
    return list(groups.values())


def task_sample(task: str, name: str, tokens: torch.Tensor, inputs: torch.Tensor | None,
                caption: torch.Tensor) -> list[Segment]:
    """One training sample: generate = [caption, media]; caption = [empty, media (context only), caption + <eos>]."""
    if task == "generate":
        return [Segment("text", caption), Segment(name, tokens, inputs)]
    return [Segment("text", EMPTY), Segment(name, tokens, inputs, learn=False), Segment("text", caption, end=True)]


def train_ar(config: ARTrainConfig, resume: bool = False) -> Path:
    """Train; returns the exported pipeline folder `<out>/pipeline`. The run holds `<out>`'s lock throughout."""
    validate(config)
    mixture = len(config.modalities) > 1 or any(run.caption_weight > 0 for run in config.modalities.values())
    accelerator = make_accelerator(config.run, find_unused_parameters=mixture)
    with folder_lock(config.out) if accelerator.is_main_process else contextlib.nullcontext():
        return _train_ar(config, accelerator, resume)


def _train_ar(config: ARTrainConfig, accelerator, resume: bool) -> Path:
    out, main, device = Path(config.out), accelerator.is_main_process, accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    tokenizers = load_tokenizers(config, device)
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(config, out / "config.json")
        encode_runs(config, tokenizers, out, device)
    accelerator.wait_for_everyone()
    full = {name: TokenizedDataset(out / "tokens" / name) for name in config.modalities}
    all_caption_bytes = {name: [text.encode(c) for c in d.captions] for name, d in full.items()}
    splits = {name: validation_split(len(d), config.modalities[name].data.validation, config.modalities[name].data.seed)
              for name, d in full.items()}  # name -> (training indices, validation indices)
    data = {name: full[name].subset(train) for name, (train, _) in splits.items()}
    caption_bytes = {name: [all_caption_bytes[name][i] for i in train.tolist()] for name, (train, _) in splits.items()}
    if main:
        logger.info("validation: %s", ", ".join(f"{name} holds out {len(held)} of {len(full[name])} items"
                                                for name, (_, held) in splits.items()))

    torch.manual_seed(config.run.seed)  # the initial weights; training randomness comes from seeded generators
    model = MMAR(model_config(config, tokenizers))
    for name, spec in model.layout.modalities.items():
        needed = 4 + max(len(c) for c in all_caption_bytes[name]) + spec.num_tokens + 1  # <bos> <m> </m> <eos>
        if needed > config.model.max_len:
            raise ValueError(f"{name} samples need {needed} positions but model.max_len is {config.model.max_len}")
    optimizer = make_optimizer(model, config.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    ema = EMA(raw, config.optim.ema_beta)
    runs = config.modalities
    order = MixtureOrder({n: len(d) for n, d in data.items()}, {n: r.mix_weight for n, r in runs.items()},
                         {n: r.caption_weight for n, r in runs.items()}, config.run.seed)
    split_record = {name: [len(train), len(held), int(held.sum())] for name, (train, held) in splits.items()}
    if resume:
        check_resumed_split(out / "checkpoints", split_record)
    start = 0
    if resume and (state := load_latest(out / "checkpoints",
                                        lambda state: restore(state, raw, ema, optimizer, order, device))):
        start = state["restored"]
        logger.info("resumed from %s at step %d", state["path"], start)
    weights = {"text": config.text_loss_weight, **{name: run.loss_weight for name, run in runs.items()}}
    validator = None
    if main and any(len(held) for _, held in splits.values()):
        # As many fixed training items as held-out ones: the same measurement on seen data.
        fit = {name: train[torch.randperm(len(train), generator=torch.Generator().manual_seed(config.run.seed))
                           [:len(held)]].sort().values for name, (train, held) in splits.items()}
        validator = Validator(full, {"validation": {name: held for name, (_, held) in splits.items()}, "fit": fit},
                              all_caption_bytes, tokenizers, raw.layout, weights, device)
    best = BestCheckpoint(out, resume)
    history: list[tuple[int, float, float]] = []
    warned = False
    log = MetricsLog(out / "metrics.jsonl", main)
    guard = DivergenceGuard(config.optim.max_nonfinite, config.optim.loss_spike_factor, out / "checkpoints")
    heads = "+".join(dict.fromkeys(run.head for run in runs.values()))
    bar = tqdm(range(start, config.optim.steps), initial=start, total=config.optim.steps, desc=f"train {heads}",
               disable=not (main and config.run.progress))
    tic, tokens_seen = time.perf_counter(), 0
    done, checkpoint_due = start, False
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.optim)
        generator = seeded_generator(config.run.seed, step, rank, device)
        cpu_generator = seeded_generator(config.run.seed, step, rank)
        torch.manual_seed(cpu_generator.initial_seed())  # dropout draws from the global RNG: seeded per step too
        batches = []
        # One micro-batch per drawn modality: rows pad to their own modality's length, not the longest's.
        micro_batches = [group for share in rank_slice(order.take(config.optim.batch_size), rank, world,
                                                       config.optim.grad_accum) for group in by_modality(share)]
        for draws in micro_batches:
            drop = (torch.rand(len(draws), generator=cpu_generator) < config.caption_dropout).tolist()  # (b,)
            samples: list = [None] * len(draws)
            for name in dict.fromkeys(d.modality for d in draws):  # each drawn modality once, batched
                rows = [i for i, d in enumerate(draws) if d.modality == name]
                tokens = data[name].tokens[[draws[i].index for i in rows]].to(device)  # (b, ...)
                inputs = tokenizers[name].teacher_inputs(tokens).float().cpu() \
                    if raw.layout.modalities[name].kind == "scales" else None  # (b, L-1, C)
                for j, i in enumerate(rows):
                    draw = draws[i]
                    caption = EMPTY if drop[i] and draw.task == "generate" else caption_bytes[name][draw.index]
                    samples[i] = task_sample(draw.task, name, tokens[j].cpu(), None if inputs is None else inputs[j],
                                             caption)
            batches.append(pack(samples, raw.layout).to(device))
        # The global number of targets per head, over micro-batches and ranks, normalises every loss.
        counts = torch.tensor([[len(b.targets[h].index) if h in b.targets else 0 for h in weights] for b in batches],
                              device=device).sum(0)  # (num_heads,)
        counts = accelerator.reduce(counts, reduction="sum").clamp_min(1)
        step_loss = torch.zeros((), device=device)  # this rank's share of the weighted loss
        sums = torch.zeros(len(weights), device=device)  # summed loss per head, for logging
        correct = torch.zeros(len(weights), device=device)
        for i, batch in enumerate(batches):
            sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
            with sync:
                with accelerator.autocast():
                    outputs = model(batch, generator)
                loss = sum(weights[h] * outputs[h].loss_sum / counts[k] for k, h in enumerate(weights) if h in outputs)
                accelerator.backward(loss * world)  # DDP averages gradients over ranks; undo it
            step_loss += loss.detach().float()
            for k, h in enumerate(weights):
                if h in outputs:
                    sums[k] += outputs[h].loss_sum.detach().float()
                    correct[k] += outputs[h].metrics.get("accuracy", torch.zeros((), device=device)).detach().float()
            tokens_seen += batch.ids.numel() * world
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.clip)
        if guard.allow(step, grad_norm, accelerator.reduce(step_loss, reduction="sum")):
            optimizer.step()
            ema.update(raw, step)
            guard.check_state(step, {"weights": raw.parameters(), "EMA": ema.shadow.values(),
                                     "optimizer state": optimizer_tensors(optimizer)})
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.run.log_every == 0 or done == config.optim.steps:
            sums, correct = accelerator.reduce(sums, reduction="sum"), accelerator.reduce(correct, reduction="sum")
            if main:
                values = {f"loss/{h}": float(sums[k] / counts[k]) for k, h in enumerate(weights)}
                values.update({f"accuracy/{h}": float(correct[k] / counts[k]) for k, h in enumerate(weights)
                               if h != "text" and raw.layout.modalities[h].kind != "vectors"})
                values.update(grad_norm=float(grad_norm), lr=optimizer.param_groups[0]["lr"],
                              tokens_per_s=tokens_seen / (time.perf_counter() - tic))
                log.write(done, values)
                bar.set_postfix({h: f"{values[f'loss/{h}']:.3f}" for h in list(runs)[:3]})
        if validator and (done % config.run.validate_every == 0 or done == config.optim.steps):
            pipeline = ema_pipeline(config, tokenizers, ema, device)
            values = validator(pipeline.model)
            log.write(done, values)
            best.offer(done, values, pipeline.save_pretrained)
            history.append((done, values["validation/loss"], values["fit/loss"]))
            if not warned and (diagnosis := memorising(history, best.step)):
                logger.warning("%s", diagnosis)
                warned = True
        if main and config.run.sample_every and (done % config.run.sample_every == 0 or done == config.optim.steps):
            prompts = {name: source_prompts(runs[name], data[name].captions, config.num_sample_prompts) for name in runs}
            grid = sample_grid(ema_pipeline(config, tokenizers, ema, device), prompts, config)
            save_atomic(grid, out / "samples" / f"step-{done:07d}.png")
        checkpoint_due |= done % config.run.checkpoint_every == 0 or done == config.optim.steps
        if checkpoint_due and guard.healthy:  # never a checkpoint of a state whose last step was skipped
            checkpoint_due = False
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(out / "checkpoints", done, model=raw.state_dict(), ema=ema.shadow,
                                optimizer=optimizer.state_dict(),
                                trainer={"data_order": order.state_dict(), "validation": split_record},
                                keep=config.run.keep_checkpoints)
        if config.run.stop_at is not None and done >= config.run.stop_at:
            break
    accelerator.wait_for_everyone()
    record_ranks(accelerator, raw, out / "ranks.json")
    if config.run.stop_at is not None and done < config.optim.steps:
        return out / "checkpoints"
    export = out / "pipeline"
    if main:
        if config.export == "best" and best.exists:
            logger.info("exporting the best validation step %d (loss %.4f; the last step's: %.4f)", best.step,
                        best.loss, history[-1][1] if history else float("nan"))
            pipeline = Pipeline.from_pretrained(best.folder, device)
        else:
            pipeline = ema_pipeline(config, tokenizers, ema, device)
        pipeline.sampling = tune_sampling(pipeline, config, out / "tuning", config.run.progress)
        pipeline.to("cpu").save_pretrained(export)
        from trainers.plots import plot_curves

        plot_curves({f"AR ({heads})": out / "metrics.jsonl"}, out / "curves.png")  # training, validation and fit
    accelerator.wait_for_everyone()
    return export


def check_resumed_split(root: Path, record: dict) -> None:
    """A resume keeps the validation split: the newest checkpoint's record (train, held-out, index sum per
    run) must be this run's, or items would move between training and validation."""
    newest = list_checkpoints(root)[-1:]
    try:
        saved = read_json(newest[0] / "trainer.json").get("validation") if newest else None
    except (OSError, ValueError, AttributeError):
        return  # a damaged checkpoint: load_latest skips it with its own message
    if saved is not None and saved != record:
        raise ValueError(f"{newest[0]} was trained with another validation split ({saved}; this run: {record}): the "
                         "data or data.validation changed. Resume with the same data, or start a new --out")


def ema_pipeline(config: ARTrainConfig, tokenizers: dict, ema: EMA, device) -> Pipeline:
    """A pipeline holding a fresh model with the EMA weights (the training model is untouched)."""
    model = MMAR(model_config(config, tokenizers))
    ema.copy_to(model)
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    sources = {name: run.data.source for name, run in config.modalities.items()}
    data = {name: dataclasses.asdict(run.data) for name, run in config.modalities.items()}
    return Pipeline(model.eval(), {"text": text, **tokenizers}, sources, data=data).to(device)


def sample_grid(pipeline: Pipeline, prompts: dict[str, list[str]], config: ARTrainConfig):
    """One row per modality: its prompts' samples, captioned "name: prompt"."""
    from mmar.media import to_preview

    pictures, captions = [], []
    columns = max(len(p) for p in prompts.values())
    for name, texts in prompts.items():
        outputs = pipeline(texts, modality=name, guidance_scale=config.sample_guidance, seed=config.run.seed)
        medium = pipeline.spec(name).medium
        pictures += [item if medium == "image" else to_preview(medium, item) for item in outputs]
        captions += [f"{name}: {t}" if len(prompts) > 1 else t for t in texts]
        pictures += [pictures[-1].copy().point(lambda _: 255)] * (columns - len(texts))  # pad the row with white
        captions += [""] * (columns - len(texts))
    return captioned_grid(pictures, captions, columns=columns)
