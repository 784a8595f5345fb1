"""A spoken-word judge mmar trains itself: a small CNN over the log-mel spectrogram of a clip -> one of `WORDS`.

No pretrained speech recogniser can be downloaded here, so the speech recipe's prompt-following is
read by a keyword-spotting classifier (the small log-mel CNNs of Sainath & Parada 2015, "CNNs for
small-footprint keyword spotting", on the command words of Warden 2018's Speech Commands,
https://arxiv.org/abs/1804.03209) trained on espeak-ng renderings of the ten words.

Three sets of voices share no voice (accent + variant):

- `speech.VOICES`: what the TTS model trains on; the judge never hears them;
- `JUDGE_VOICES`: the judge's training voices, the TTS model's five accents and New York English
  with voice variants the TTS model never heard, over wider speeds and pitches;
- `TEST_VOICES`: `speech.HELD_OUT_VOICES` and two more in the Lancaster and West Midlands accents,
  which the other two sets never use: the judge's held-out accuracy is measured on them.

Training clips are augmented on the waveform (a random gain with clipping, a time shift of -0.1 to
+0.15 s, a little white noise) so the judge tolerates imperfect generated speech; the log-mel
spectrogram is standardised per clip, so loudness does not matter. AdamW with a cosine decay;
deterministic for a seed (the global RNG is never used). Like `feature_net`, a trained judge is
saved as config.json + model.safetensors + report.json + manifest.json and cached in
`$MMAR_CACHE/speech_judge/<identity>` (default `~/.cache/mmar`), the identity a SHA-256 of the
training settings, the voices and the espeak-ng version: trained once on first use, then loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from mmar.config import validate
from mmar.data.speech import HELD_OUT_VOICES, PITCHES, SPEEDS, VOICES, WORDS, espeak_binary, speak
from mmar.evaluation.feature_net import he_initialise
from mmar.files import load_model_folder, load_or_train_folder, save_model_folder
from tokenizers_vq.audio_losses import log_mel

logger = logging.getLogger(__name__)

JUDGE_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
JUDGE_VARIANTS = ("+m1", "+m2", "+m5", "+m7", "+f1", "+f5", "+klatt", "+klatt3")
JUDGE_VOICES = ("en-us-nyc",) + tuple(accent + variant for accent in JUDGE_ACCENTS for variant in JUDGE_VARIANTS)
TEST_VOICES = HELD_OUT_VOICES + ("en-gb-x-gbclan+m4", "en-gb-x-gbcwmd+m6")
JUDGE_SPEEDS = (110, 220)  # words per minute, wider than the TTS data's SPEEDS
JUDGE_PITCHES = (15, 85)  # espeak-ng -p, wider than the TTS data's PITCHES
SILENCE = 1e-3  # a clip whose peak is under this says no word (espeak-ng's peak at ~0.4..0.8)
#: bump when training changes, so caches made by older code are not reused
FORMAT = 1


@dataclass
class SpeechJudgeConfig:
    words: tuple[str, ...] = WORDS  # the K classes, in this order
    sample_rate: int = 16000
    num_samples: int = 16000  # S: clips are cut or padded with silence at the end to this
    n_fft: int = 1024  # hop n_fft // 4: 16 ms frames at 16 kHz
    num_mels: int = 64  # M, a multiple of 8 (three 2x poolings)
    width: int = 16  # channels of the first stage, doubled at each of the two next

    LIMITS = {"sample_rate": "[1000, 192000]", "num_samples": "[256, 10000000]", "n_fft": "[64, 8192]",
              "num_mels": "[8, 256]", "width": "[1, 256]"}

    def check(self) -> None:
        if len(set(self.words)) != len(self.words) or len(self.words) < 2:
            raise ValueError(f"words must be at least two distinct words, got {self.words}")
        if self.num_mels % 8:
            raise ValueError(f"num_mels must be a multiple of 8 (three 2x poolings), got {self.num_mels}")
        if self.num_samples < 8 * self.n_fft // 4:
            raise ValueError(f"num_samples {self.num_samples} is too short for n_fft {self.n_fft}: "
                             f"at least {2 * self.n_fft} samples make 8 frames")


@dataclass(frozen=True)
class JudgeTraining:
    """How a judge is trained: what it hears, and the optimisation."""

    num_clips: int = 1200  # training clips in JUDGE_VOICES, the words in turn
    num_test_clips: int = 200  # held-out clips in TEST_VOICES at the TTS data's speeds and pitches
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    width: int = 16
    seed: int = 0


#: a seconds-long judge for tests and the tiny quickstart (far from accurate on held-out voices)
TINY_TRAINING = JudgeTraining(num_clips=60, num_test_clips=20, steps=60, batch_size=32, width=8)


def _stage(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """Conv 3x3, BatchNorm, ReLU, then a 2x max-pool when `pool`: (B, in, M, T) -> (B, out, M/2, T/2)."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


class SpeechJudge(nn.Module):
    """Clips (B, 1, S) at `sample_rate` -> word logits (B, K).

    Three pooled stages and one more convolution see ~0.6 s of audio around each frame; the mean
    over time then makes the judge indifferent to where in the clip the word is said.
    """

    def __init__(self, config: SpeechJudgeConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = validate(config)
        width = config.width
        with torch.device("meta"):  # no default initialisation draws from the global RNG
            self.stages = nn.Sequential(_stage(1, width, True), _stage(width, 2 * width, True),
                                        _stage(2 * width, 4 * width, True), _stage(4 * width, 4 * width, False))
            self.classifier = nn.Linear(4 * width * (config.num_mels // 8), len(config.words))
        self.to_empty(device="cpu")
        self.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0))

    def reset_parameters(self, generator: torch.Generator) -> None:
        he_initialise(self, generator)

    def spectrogram(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, 1, S) -> log-mel standardised per clip (B, 1, M, T)."""
        config = self.config
        mel = log_mel(clips[:, 0], config.sample_rate, config.n_fft, config.num_mels)  # (B, M, T)
        mean = mel.mean((1, 2), keepdim=True)  # (B, 1, 1)
        std = mel.std((1, 2), keepdim=True)  # (B, 1, 1)
        return ((mel - mean) / (std + 1e-5))[:, None]  # (B, 1, M, T)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, 1, S) -> logits (B, K)."""
        if clips.dim() != 3 or tuple(clips.shape[1:]) != (1, self.config.num_samples):
            raise ValueError(f"expected clips (B, 1, {self.config.num_samples}), got shape {tuple(clips.shape)}")
        hidden = self.stages(self.spectrogram(clips))  # (B, 4w, M/8, T/8)
        pooled = rearrange(hidden.mean(-1), "b c m -> b (c m)")  # (B, 4w * M/8)
        return self.classifier(pooled)  # (B, K)

    @torch.no_grad()
    def judge(self, clips: torch.Tensor | list[torch.Tensor], batch_size: int = 256) -> list[str]:
        """The word said in each clip: (N, 1, S') or (N, S') or a list of (1, S') or (S',) tensors at
        `sample_rate`, any length S' (cut or padded to S) -> N words, "" for a silent clip (peak under
        `SILENCE`). Eval mode, `batch_size` at a time."""
        batch = as_clips(clips, self.config.num_samples)  # (N, 1, S)
        was_training = self.training
        self.eval()
        predicted = torch.cat([self(chunk).argmax(1) for chunk in batch.split(batch_size)])  # (N,)
        self.train(was_training)
        # standardisation would blow a silent clip's floor up into some word; silence says nothing
        silent = (batch.abs().amax((1, 2)) < SILENCE).tolist()  # N bools
        return ["" if quiet else self.config.words[i] for i, quiet in zip(predicted.tolist(), silent)]

    # --- save / load ---------------------------------------------------------------------------
    def save(self, directory: str | Path, report: dict[str, Any]) -> Path:
        """Write config.json, model.safetensors, report.json and manifest.json atomically (`save_model_folder`)."""
        return save_model_folder(self, self.config, report, directory, "the speech judge")

    @classmethod
    def load(cls, directory: str | Path) -> tuple["SpeechJudge", dict[str, Any]]:
        """(in eval mode, report) from a `save` folder, every file checked (`load_model_folder`)."""
        return load_model_folder(cls, SpeechJudgeConfig, directory)


def as_clips(clips: torch.Tensor | list[torch.Tensor], num_samples: int) -> torch.Tensor:
    """Mono clips of any length -> (N, 1, num_samples) float32 on the CPU, cut or padded with silence at the end.

    Takes a tensor (N, 1, S) or (N, S), or a list of (1, S) or (S,) tensors; anything else (several
    channels, no samples, no clips, non-finite values) is a ValueError saying what was expected."""
    if isinstance(clips, torch.Tensor):
        if clips.dim() not in (2, 3) or (clips.dim() == 3 and clips.shape[1] != 1):
            raise ValueError(f"expected mono clips (N, 1, S) or (N, S), got shape {tuple(clips.shape)}")
        items = list(clips.reshape(len(clips), -1))  # N x (S,)
    else:
        items = []
        for clip in clips:
            if not isinstance(clip, torch.Tensor) or clip.dim() not in (1, 2) or (clip.dim() == 2 and clip.shape[0] != 1):
                shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
                raise ValueError(f"expected each clip as a mono tensor (1, S) or (S,), got {shape}")
            items.append(clip.reshape(-1))  # (S,)
    if not items or min(len(item) for item in items) == 0:
        raise ValueError("expected at least one clip of at least one sample")
    batch = torch.stack([F.pad(item.detach().float().cpu()[:num_samples], (0, max(0, num_samples - len(item))))
                         for item in items])[:, None]  # (N, 1, S)
    if not bool(torch.isfinite(batch).all()):
        raise ValueError("clips hold NaN or infinite samples")
    return batch


@torch.no_grad()
def accuracy(judge: SpeechJudge, clips: torch.Tensor | list[torch.Tensor], words: list[str]) -> float:
    """The fraction of clips whose judged word is `words[i]`."""
    if len(clips) != len(words) or not words:
        raise ValueError(f"{len(clips)} clips for {len(words)} words")
    return sum(said == word for said, word in zip(judge.judge(clips), words)) / len(words)


def word_accuracies(judge: SpeechJudge, clips: torch.Tensor, words: list[str]) -> dict[str, float]:
    """Accuracy per word present in `words` (judge's word order), plus "all"."""
    said = judge.judge(clips)
    right = {word: [s == w for s, w in zip(said, words) if w == word] for word in judge.config.words if word in words}
    return {**{word: sum(hits) / len(hits) for word, hits in right.items()},
            "all": sum(s == w for s, w in zip(said, words)) / len(words)}


def render(num_clips: int, voices: tuple[str, ...], speeds: tuple[int, int], pitches: tuple[int, int], seed: int,
           words: tuple[str, ...] = WORDS, sample_rate: int = 16000, num_samples: int = 16000,
           progress: bool = False, description: str = "speech judge clips") -> tuple[torch.Tensor, list[str]]:
    """`num_clips` espeak-ng clips -> (clips (N, 1, S), their words): clip i says words[i % K] (balanced),
    in a voice, speed and pitch drawn uniformly with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    clips, said = [], []
    for index in tqdm(range(num_clips), desc=description, unit="clip", disable=not progress):
        voice = voices[int(torch.randint(len(voices), (), generator=generator))]
        speed = int(torch.randint(speeds[0], speeds[1] + 1, (), generator=generator))
        pitch = int(torch.randint(pitches[0], pitches[1] + 1, (), generator=generator))
        word = words[index % len(words)]
        clips.append(speak(word, voice, speed, pitch, seconds=num_samples / sample_rate, sample_rate=sample_rate))
        said.append(word)
    return torch.stack(clips), said  # (N, 1, S), N words


def augment(clips: torch.Tensor, generator: torch.Generator, sample_rate: int) -> torch.Tensor:
    """Clips (B, 1, S): a gain of 0.3x..2x clipped to [-1, 1], a shift of -0.1..+0.15 s (silence
    filled in), white noise at 0..1% of full scale."""
    batch, _, length = clips.shape
    gain = torch.empty(batch, 1, 1).uniform_(math.log(0.3), math.log(2.0), generator=generator).exp()  # (B, 1, 1)
    shifts = torch.randint(-sample_rate // 10, 3 * sample_rate // 20 + 1, (batch,), generator=generator)  # (B,)
    source = torch.arange(length)[None] - shifts[:, None]  # (B, S): sample t comes from t - shift
    inside = (source >= 0) & (source < length)  # (B, S)
    shifted = clips[:, 0].gather(1, source.clamp(0, length - 1)) * inside  # (B, S)
    noise = torch.randn(batch, length, generator=generator) * torch.rand(batch, 1, generator=generator) * 0.01  # (B, S)
    return (shifted[:, None] * gain + noise[:, None]).clamp(-1, 1)  # (B, 1, S)


def train_judge(training: JudgeTraining = JudgeTraining(), progress: bool = False) -> tuple[SpeechJudge, dict[str, Any]]:
    """Render clips in JUDGE_VOICES and TEST_VOICES, train a judge -> (judge in eval mode, report).

    The report: held_out_accuracy and per_word_accuracy on the TEST_VOICES clips, train_accuracy
    (unaugmented training clips), the voices, seconds (rendering, training) and the settings.
    """
    if min(training.num_clips, training.num_test_clips, training.steps, training.batch_size) < 1 \
            or not training.learning_rate > 0:
        raise ValueError(f"every training setting must be positive, got {training}")
    config = SpeechJudgeConfig(width=training.width)
    start = time.perf_counter()
    clips, words = render(training.num_clips, JUDGE_VOICES, JUDGE_SPEEDS, JUDGE_PITCHES, training.seed,
                          config.words, config.sample_rate, config.num_samples, progress, "speech judge: training clips")
    test_clips, test_words = render(training.num_test_clips, TEST_VOICES, SPEEDS, PITCHES, training.seed + 1,
                                    config.words, config.sample_rate, config.num_samples, progress,
                                    "speech judge: held-out clips")
    rendering = time.perf_counter() - start
    labels = torch.tensor([config.words.index(word) for word in words])  # (N,)
    generator = torch.Generator().manual_seed(training.seed)
    judge = SpeechJudge(config, generator).train()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=training.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / training.steps)))
    bar = tqdm(range(training.steps), desc="speech judge: training", disable=not progress)
    with torch.enable_grad():  # first use is often inside an evaluation's no_grad
        for _ in bar:
            index = torch.randint(len(clips), (training.batch_size,), generator=generator)  # (B,)
            loss = F.cross_entropy(judge(augment(clips[index], generator, config.sample_rate)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    judge.eval()
    per_word = word_accuracies(judge, test_clips, test_words)
    report = {"held_out_accuracy": per_word.pop("all"), "per_word_accuracy": per_word,
              "train_accuracy": accuracy(judge, clips, words), "num_clips": len(words), "num_test_clips": len(test_words),
              "judge_voices": list(JUDGE_VOICES), "test_voices": list(TEST_VOICES),
              "seconds": {"rendering": round(rendering, 1), "training": round(time.perf_counter() - start - rendering, 1)},
              "settings": asdict(training)}
    return judge, report


def espeak_version() -> str:
    """espeak-ng's own version line (a new espeak-ng may say the words differently: a new judge)."""
    result = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def identity(training: JudgeTraining) -> str:
    """SHA-256 over the format, the training settings, the words, the three voice sets and espeak-ng's version."""
    header = {"format": FORMAT, "settings": asdict(training), "words": WORDS, "voices": VOICES,
              "judge_voices": JUDGE_VOICES, "test_voices": TEST_VOICES, "espeak": espeak_version()}
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """`$MMAR_CACHE/speech_judge`, or `~/.cache/mmar/speech_judge` without it."""
    return Path(os.environ.get("MMAR_CACHE") or Path.home() / ".cache" / "mmar").expanduser() / "speech_judge"


def load_or_train(training: JudgeTraining = JudgeTraining(), cache_dir: str | Path | None = None,
                  progress: bool = True) -> tuple[SpeechJudge, dict[str, Any]]:
    """The judge `train_judge` gives for `training`, cached in `cache_dir/<identity>/` (default
    `default_cache_dir()`). A cached folder is used only when its hashes, config, finite weights and
    recorded identity all check out; anything else is logged in one line and retrained over."""
    key = identity(training)
    directory = Path(cache_dir if cache_dir is not None else default_cache_dir()) / key[:32]

    def train() -> tuple[SpeechJudge, dict[str, Any]]:
        logger.warning("training the spoken-word judge once (%d espeak-ng clips, %d steps; the full judge takes "
                       "about two minutes on one CPU thread), cached in %s", training.num_clips, training.steps,
                       directory)
        return train_judge(training, progress=progress)

    return load_or_train_folder(directory, key, SpeechJudge.load, train, "speech judge")
