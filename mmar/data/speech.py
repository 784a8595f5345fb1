"""Spoken words made on the machine with espeak-ng: the caption is exactly the text that is said.

Item i of seed s picks, with a generator seeded by (s, i), a word of `WORDS`, a voice of `VOICES`
(an accent plus a voice variant), a speed (words per minute) and a pitch; `espeak-ng -w` writes a
22,050 Hz WAV that is read back with soundfile, resampled to `sample_rate` and cut or padded to
`seconds` (mmar/data/audio_folder.py's reader). espeak-ng is deterministic, so the same item is
always the same clip; rendered clips are kept in memory (64 kB per second of audio).
`HELD_OUT_VOICES` are never drawn here: a spoken-word judge can be tested on them.
espeak-ng comes from the Debian package of the same name (`apt-get install -y espeak-ng`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from mmar.data.audio_folder import load_audio
from mmar.data.media_source import AudioSource

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029")
VARIANTS = ("", "+m3", "+f2", "+f4")
VOICES = tuple(accent + variant for accent in ACCENTS for variant in VARIANTS)
HELD_OUT_VOICES = ("en-gb-x-gbclan", "en-gb-x-gbcwmd+f3")
SPEEDS = (130, 190)  # words per minute, drawn uniformly
PITCHES = (30, 70)  # espeak-ng -p, drawn uniformly


def espeak_binary() -> str:
    """The espeak-ng executable, or a one-line FileNotFoundError naming the package to install."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed; the speech source needs it: "
                                "sudo apt-get install -y espeak-ng")
    return binary


def speak(text: str, voice: str, speed: int, pitch: int, *, seconds: float = 1.0,
          sample_rate: int = 16000) -> torch.Tensor:
    """Say `text` -> (1, round(seconds * sample_rate)) float in [-1, 1]."""
    binary = espeak_binary()
    with tempfile.TemporaryDirectory(prefix="mmar-speech-") as folder:
        path = Path(folder) / "said.wav"
        result = subprocess.run([binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not path.is_file():
            message = (result.stderr or result.stdout).strip().splitlines()
            raise ValueError(f"espeak-ng could not say {text!r} with voice {voice!r}: "
                             f"{message[0] if message else f'exit code {result.returncode}'}")
        return load_audio(path, sample_rate, round(seconds * sample_rate))  # (1, S)


class SpeechDataset(AudioSource):
    """`num_items` spoken words (1, S) with their text as the caption; `words` / `voices` narrow the draw."""


    @classmethod
    def build(cls, *, num_items: int | None, seed: int, path: str | None, seconds: float = 1.0,
              sample_rate: int = 16000, **_: object) -> "SpeechDataset":
        if num_items is None:
            raise ValueError("the speech source needs num_items (it is procedural and unbounded)")
        return cls(num_items, seconds=seconds, sample_rate=sample_rate, seed=seed)

    def __init__(self, num_items: int = 4_000, seconds: float = 1.0, sample_rate: int = 16000, seed: int = 0,
                 words: tuple[str, ...] = WORDS, voices: tuple[str, ...] = VOICES) -> None:
        espeak_binary()  # fail at once, in one line, when the package is missing
        if not words or not voices:
            raise ValueError("the speech source needs at least one word and one voice")
        self.num_items, self.seconds, self.sample_rate, self.seed = num_items, seconds, sample_rate, seed
        self.words, self.voices = tuple(words), tuple(voices)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.num_items

    def attributes(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pick = lambda n: int(torch.randint(n, (), generator=generator))  # noqa: E731
        between = lambda low, high: low + pick(high - low + 1)  # noqa: E731
        return {"text": self.words[pick(len(self.words))], "voice": self.voices[pick(len(self.voices))],
                "speed": between(*SPEEDS), "pitch": between(*PITCHES)}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        a = self.attributes(index)
        if index not in self._cache:
            self._cache[index] = speak(a["text"], a["voice"], a["speed"], a["pitch"], seconds=self.seconds,
                                       sample_rate=self.sample_rate)
        return self._cache[index].clone(), a["text"]  # (1, S), str
