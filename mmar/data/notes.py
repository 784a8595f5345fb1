"""Procedural captioned audio: one instrument playing one note once, four times, or as a rising arpeggio.

Caption grammar, exactly: "a {timbre} playing {note} {rhythm}" with timbre in {sine, square,
sawtooth, pluck}, note a natural note C4..B4, rhythm in {once, four times, rising} (rising = an
arpeggio up from the note: root, major third, fifth, octave). 4 x 7 x 3 = 84 captions.

Clips are mono (1, S) float in [-1, 1] at `sample_rate` (16 kHz by default), `seconds` long (1 s
by default). Square and sawtooth waves are band-limited (additive, harmonics below 0.45 of the
sample rate) so that no aliasing blurs the pitch; "pluck" is a decaying sum of harmonics whose
upper partials die out faster (a Karplus-Strong-like sound without the delay line). Notes are
separated by silence, so onsets stay countable after a codec with 20 ms frames. Deterministic:
item i of seed s is drawn from a generator seeded by (s, i): amplitude, onset jitter (+-10 ms),
detune (+-10 cents) and phase vary; the caption never lies.
"""

from __future__ import annotations

import itertools
import math

import torch

from mmar.data.media_source import AudioSource

TIMBRES = ("sine", "square", "sawtooth", "pluck")
#: natural notes of the fourth octave -> MIDI note number
NOTES: dict[str, int] = {"C4": 60, "D4": 62, "E4": 64, "F4": 65, "G4": 67, "A4": 69, "B4": 71}
RHYTHMS = ("once", "four times", "rising")
ARPEGGIO = (0, 4, 7, 12)  # semitones above the root: a major triad and the octave
LEAD_IN = 0.05  # s of silence before the first onset


def caption(timbre: str, note: str, rhythm: str) -> str:
    return f"a {timbre} playing {note} {rhythm}"


def all_captions() -> list[str]:
    """Every caption the grammar allows (84), in a fixed order."""
    return [caption(t, n, r) for t, n, r in itertools.product(TIMBRES, NOTES, RHYTHMS)]


def parse_caption(text: str) -> tuple[str, str, str]:
    """Inverse of `caption` -> (timbre, note, rhythm); a ValueError for text outside the grammar."""
    words = text.strip().split(" ", 4)
    if len(words) >= 4 and words[0] == "a" and words[1] in TIMBRES and words[2] == "playing" and words[3] in NOTES:
        rhythm = words[4] if len(words) == 5 else ""
        if rhythm in RHYTHMS:
            return words[1], words[3], rhythm
    raise ValueError(f"not a notes caption: {text!r} (expected 'a {{timbre}} playing {{note}} {{rhythm}}')")


def frequency(midi: float) -> float:
    """MIDI note number -> Hz (A4 = 69 = 440 Hz)."""
    return 440.0 * 2 ** ((midi - 69) / 12)


def note_times(rhythm: str, seconds: float) -> list[tuple[float, float]]:
    """(onset, length) in seconds of every note of `rhythm` in a clip of `seconds` (before jitter)."""
    usable = seconds - 2 * LEAD_IN
    if rhythm == "once":
        return [(LEAD_IN, 0.75 * usable)]
    slot = usable / 4
    return [(LEAD_IN + k * slot, 0.7 * slot) for k in range(4)]


def tone(timbre: str, hertz: float, length: int, sample_rate: int, phase: float) -> torch.Tensor:
    """One note without envelope edges -> (length,) float, peak 1."""
    t = torch.arange(length, dtype=torch.float64) / sample_rate  # (L,)
    limit = 0.45 * sample_rate
    if timbre == "sine":
        return torch.sin(2 * math.pi * hertz * t + phase).float()
    if timbre == "square":
        harmonics = torch.arange(1, int(limit // hertz) + 1, 2, dtype=torch.float64)  # odd k
        weights = 1.0 / harmonics  # (K,)
        decay = torch.ones(len(harmonics), length, dtype=torch.float64)  # (K, L)
    elif timbre == "sawtooth":
        harmonics = torch.arange(1, int(limit // hertz) + 1, dtype=torch.float64)  # every k
        weights = 1.0 / harmonics  # (K,)
        decay = torch.ones(len(harmonics), length, dtype=torch.float64)  # (K, L)
    elif timbre == "pluck":
        harmonics = torch.arange(1, min(int(limit // hertz), 12) + 1, dtype=torch.float64)  # (K,)
        weights = harmonics.pow(-1.5)  # (K,)
        decay = torch.exp(-t[None, :] * (6.0 + 4.0 * harmonics[:, None]))  # (K, L): upper partials fade faster
    else:
        raise ValueError(f"unknown timbre {timbre!r}; known: {TIMBRES}")
    waves = torch.sin(2 * math.pi * hertz * harmonics[:, None] * t[None, :] + phase * harmonics[:, None])  # (K, L)
    signal = (weights[:, None] * decay * waves).sum(0)  # (L,)
    return (signal / signal.abs().max().clamp_min(1e-8)).float()  # (L,) peak exactly 1


def render(timbre: str, note: str, rhythm: str, *, seconds: float = 1.0, sample_rate: int = 16000,
           amplitude: float = 0.6, jitter: tuple[float, ...] = (0.0,) * 4, detune: float = 0.0,
           phase: float = 0.0) -> torch.Tensor:
    """One clip -> (1, round(seconds * sample_rate)) float in [-1, 1].

    `jitter`: seconds added to each note's onset; `detune`: cents added to every note."""
    total = round(seconds * sample_rate)
    audio = torch.zeros(total)  # (S,)
    steps = ARPEGGIO if rhythm == "rising" else (0,) * 4
    attack, release = round(0.005 * sample_rate), round(0.015 * sample_rate)
    for k, (onset, length) in enumerate(note_times(rhythm, seconds)):
        start, size = round((onset + jitter[k]) * sample_rate), round(length * sample_rate)
        size = min(size, total - start)
        hertz = frequency(NOTES[note] + steps[k] + detune / 100)
        envelope = torch.ones(size)  # (L,)
        envelope[:attack] = torch.linspace(0, 1, attack)
        envelope[-release:] = torch.minimum(envelope[-release:], torch.linspace(1, 0, release))
        audio[start:start + size] += amplitude * envelope * tone(timbre, hertz, size, sample_rate, phase)
    return audio.clamp(-1, 1)[None]  # (1, S)


class NotesDataset(AudioSource):
    """`num_items` captioned clips; item i is drawn from a generator seeded by (seed, i)."""


    @classmethod
    def build(cls, *, num_items: int | None, seed: int, path: str | None, seconds: float = 1.0,
              sample_rate: int = 16000, **_: object) -> "NotesDataset":
        if num_items is None:
            raise ValueError("the notes source needs num_items (it is procedural and unbounded)")
        return cls(num_items=num_items, seconds=seconds, sample_rate=sample_rate, seed=seed)

    def __init__(self, num_items: int = 10_000, seconds: float = 1.0, sample_rate: int = 16000, seed: int = 0) -> None:
        if not 0.5 <= seconds <= 10:
            raise ValueError(f"notes clips must be 0.5 to 10 s long, got {seconds}")
        if sample_rate < 8000:
            raise ValueError(f"notes need a sample rate of at least 8000 Hz (B5 and its harmonics), got {sample_rate}")
        self.num_items, self.seconds, self.sample_rate, self.seed = num_items, seconds, sample_rate, seed

    def __len__(self) -> int:
        return self.num_items

    def attributes(self, index: int) -> dict:
        """The random choices of item `index`: timbre, note, rhythm and the small variations."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pick = lambda n: int(torch.randint(n, (), generator=generator))  # noqa: E731
        uniform = lambda low, high: low + (high - low) * float(torch.rand((), generator=generator))  # noqa: E731
        return {"timbre": TIMBRES[pick(len(TIMBRES))], "note": list(NOTES)[pick(len(NOTES))],
                "rhythm": RHYTHMS[pick(len(RHYTHMS))], "amplitude": uniform(0.35, 0.8),
                "jitter": tuple(uniform(-0.01, 0.01) for _ in range(4)), "detune": uniform(-10, 10),
                "phase": uniform(0, 2 * math.pi)}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        a = self.attributes(index)
        audio = render(a["timbre"], a["note"], a["rhythm"], seconds=self.seconds, sample_rate=self.sample_rate,
                       amplitude=a["amplitude"], jitter=a["jitter"], detune=a["detune"], phase=a["phase"])
        return audio, caption(a["timbre"], a["note"], a["rhythm"])  # (1, S), str
