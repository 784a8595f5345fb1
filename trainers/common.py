"""Pieces both training loops share: optimiser settings and schedule, seeded randomness, data order,
EMA and JSONL metrics (the divergence guard is trainers/divergence.py). Each loop (ar.py, tokenizer.py) reads top to bottom
and calls these.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 32  # per optimiser step, over all ranks and micro-batches
    grad_accum: int = 1  # micro-batches per step on each rank
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    ema_beta: float = 0.999
    max_nonfinite: int = 5  # this many skipped steps in a row (non-finite or loss spike) stop the run
    # A step whose loss is above this times the median of the last 50 applied steps' losses is a
    # spike: it is skipped and counted like a non-finite step (see trainers/divergence.py); 0 = off.
    loss_spike_factor: float = 5.0

    LIMITS = {"steps": "[1, inf)", "batch_size": "[1, inf)", "grad_accum": "[1, inf)",
              "learning_rate": "(0, inf)", "min_lr_ratio": "[0, 1]", "warmup_steps": "[0, inf)",
              "weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)", "clip": "(0, inf)",
              "ema_beta": "[0, 1)", "max_nonfinite": "[1, inf)", "loss_spike_factor": "[0, inf)"}

    def check(self) -> None:
        if 0 < self.loss_spike_factor <= 1:
            raise ValueError(f"loss_spike_factor must be 0 (off) or above 1, got {self.loss_spike_factor}")


def learning_rate(step: int, config: OptimConfig) -> float:
    """Linear warmup, then cosine to `min_lr_ratio` of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and embeddings (any parameter with < 2 dims or an embedding)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.dim() >= 2 and "embedding" not in name else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2))


def seeded_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """All training randomness comes from here: a generator seeded by (seed, step, rank)."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


class DataOrder:
    """An epoch-wise permutation seeded by (seed, epoch); its position is saved for exact resume."""

    def __init__(self, num_items: int, seed: int) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty")
        self.num_items, self.seed = num_items, seed
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation)

    def _permutation(self) -> torch.Tensor:
        if self._cached is None or self._cached[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
            self._cached = (self.epoch, torch.randperm(self.num_items, generator=generator))  # (num_items,)
        return self._cached[1]

    def take(self, count: int) -> list[int]:
        indices = []
        while len(indices) < count:
            permutation = self._permutation()
            chunk = permutation[self.position: self.position + count - len(indices)].tolist()
            indices += chunk
            self.position += len(chunk)
            if self.position >= self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class EMA:
    """Exponential moving average of weights with warm-up: decay = min(beta, (1 + s) / (10 + s))."""

    def __init__(self, model: nn.Module, beta: float) -> None:
        self.beta = beta
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.beta, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                shadow.copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in self.shadow.items()})


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.started = time.perf_counter()

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.perf_counter() - self.started, 3), **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class DataConfig:
    source: str = "shapes"  # a key of mmar.data.DATA_SOURCES (shapes | fashion_mnist | folder | ...)
    size: int = 32
    num_items: int = 20_000  # procedural sources; real sources are capped to this
    seed: int = 0
    path: str | None = None  # the folder source's root
    num_frames: int = 9  # video sources: frames per clip (1 + 4k for the causal video tokenizer)
    frame_stride: int = 1  # video folders: keep every frame_stride-th frame of a file, from its first
    # audio sources (notes, audio_folder): clip length and rate; clips are cut or padded to
    # round(seconds * sample_rate) samples, which the audio codec needs to be a multiple of its hop (320)
    seconds: float = 1.0
    sample_rate: int = 16000
    # held out from training, seeded by `seed` (mmar.data.split): at most a fifth of the items; 0 = none
    validation: int = 1000

    LIMITS = {"size": "[1, 4096]", "num_items": "[1, inf)", "seed": "[0, 9.2e18]", "validation": "[0, inf)"}

    def check(self) -> None:
        from mmar.data import DATA_SOURCES

        if self.source not in DATA_SOURCES:
            raise ValueError(f"source {self.source!r} is unknown; known: {', '.join(DATA_SOURCES)}")


@dataclass
class RunConfig:
    """How a run logs, samples, saves and seeds."""

    log_every: int = 10
    validate_every: int = 100  # validation loss on the held-out split every this many steps (and at the end)
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    cpu: bool = False  # force CPU even when CUDA is available
    progress: bool = True
    stop_at: int | None = None  # end this invocation after this step (the schedule still spans optim.steps)

    LIMITS = {"log_every": "[1, inf)", "validate_every": "[1, inf)", "sample_every": "[0, inf)", "checkpoint_every": "[1, inf)",
              "keep_checkpoints": "[1, inf)", "seed": "[0, 9.2e18]", "stop_at": "[1, inf)"}


def make_accelerator(run: RunConfig, find_unused_parameters: bool = False):
    """An Accelerator: bf16 autocast on GPU, fp32 on CPU; checks the launcher's world size.

    `find_unused_parameters`: some parameters may get no gradient in a step (a mixture's head
    whose modality was not drawn); DDP must then be told, or it raises.
    """
    import os

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    use_cpu = run.cpu or not torch.cuda.is_available()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    accelerator = Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else "bf16", kwargs_handlers=handlers)
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(f"launched {expected} processes but accelerate sees {accelerator.num_processes}; "
                           "on CPU use `torchrun --nproc_per_node N` (see README)")
    return accelerator


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal digests mean bitwise-equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record_ranks(accelerator, module: torch.nn.Module, path: Path) -> None:
    """Write {num_processes, digest per rank} so a run can prove its ranks ended identical."""
    from accelerate.utils import gather_object

    digests = gather_object([weights_digest(module)])
    if accelerator.is_main_process:
        path.write_text(json.dumps({"num_processes": accelerator.num_processes, "weights_sha256": digests}, indent=2) + "\n")


def restore(state: dict[str, Any], model: nn.Module, ema: EMA, optimizer, order: DataOrder, device) -> int:
    """Load a checkpoint from `trainers.checkpoint.load_latest` into the run; returns the step to continue from."""
    model.load_state_dict(state["model"])
    if set(state["ema"]) != set(ema.shadow):
        raise ValueError("its EMA tensors do not match the model's")
    ema.shadow = {k: v.to(device) for k, v in state["ema"].items()}
    optimizer.load_state_dict(state["optimizer"])
    order.load_state_dict(state["trainer"]["data_order"])
    return int(state["trainer"]["step"])


def rank_slice(indices: list, rank: int, world: int, grad_accum: int) -> list[list]:
    """This rank's share of a global batch, split into `grad_accum` micro-batches."""
    mine = indices[rank::world]
    size = (len(mine) + grad_accum - 1) // grad_accum
    return [mine[i:i + size] for i in range(0, len(mine), size)]
