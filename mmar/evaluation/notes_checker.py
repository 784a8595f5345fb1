"""Analytic checker for the procedural notes: onsets from the energy envelope, pitch from the spectrum.

`describe(audio)` reads a clip back into what its caption says:

- onsets: the RMS envelope in 10 ms frames, "on" above 20% of the clip's loudest frame; runs of
  "on" shorter than 30 ms are dropped and gaps shorter than 30 ms are bridged (a note is one run);
- the pitch of each note: the strongest spectral peak between 200 and 1100 Hz (every timbre of
  the dataset has its strongest partial at the fundamental; the arpeggio tops out at B5, 988 Hz)
  in a Hann-windowed, zero-padded FFT of the note's first 100 ms (after 10 ms of attack), refined
  by parabolic interpolation, rounded to the nearest MIDI note;
- the rhythm: one note is "once"; four notes are "four times" when they stay within a semitone of
  the first and "rising" when each is above the one before and the last is at least 6 semitones
  above the first; anything else has no rhythm of the grammar (None).

The note is the first note's pitch named as a natural note of the fourth octave (None otherwise).
Agreement with the dataset's own captions is measured by demos/check_notes_checker.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mmar.data.notes import NOTES

NAMES = {midi: name for name, midi in NOTES.items()}
FRAME = 0.010  # s per envelope frame
THRESHOLD = 0.2  # of the loudest frame's RMS
MIN_RUN = 3  # frames: shorter runs and gaps are noise
LOWEST, HIGHEST = 200.0, 1100.0  # Hz searched for the fundamental


class Description(NamedTuple):
    note: str | None  # the first note, e.g. "E4", or None when it is not a natural note of octave 4
    rhythm: str | None  # "once" | "four times" | "rising" | None
    num_onsets: int
    pitches: tuple[int, ...]  # MIDI note of each detected note


def note_spans(audio: torch.Tensor, sample_rate: int) -> list[tuple[int, int]]:
    """mono (S,) -> [(first sample, end sample)] of every note, from the thresholded RMS envelope."""
    hop = round(FRAME * sample_rate)
    frames = audio[: len(audio) // hop * hop].view(-1, hop)  # (F, hop)
    rms = frames.pow(2).mean(1).sqrt()  # (F,)
    if float(rms.max()) < 1e-3:
        return []  # silence
    on = (rms > THRESHOLD * rms.max()).tolist()
    runs, start = [], None
    for index, value in enumerate(on + [False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs.append([start, index])
            start = None
    merged: list[list[int]] = []
    for run in runs:  # bridge short gaps, then drop short runs
        if merged and run[0] - merged[-1][1] < MIN_RUN:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    return [(a * hop, b * hop) for a, b in merged if b - a >= MIN_RUN]


def pitch(segment: torch.Tensor, sample_rate: int) -> float:
    """mono (L,) -> the fundamental in Hz (strongest peak in [LOWEST, HIGHEST])."""
    window = torch.hann_window(len(segment), dtype=torch.float64)  # (L,)
    size = 1 << 15
    spectrum = torch.fft.rfft(segment.double() * window, n=size).abs()  # (size/2 + 1,)
    hertz = torch.arange(len(spectrum), dtype=torch.float64) * sample_rate / size  # (size/2 + 1,)
    band = (hertz >= LOWEST) & (hertz <= HIGHEST)  # (size/2 + 1,)
    index = int(torch.where(band, spectrum, torch.zeros_like(spectrum)).argmax())
    left, middle, right = (float(spectrum[i]) for i in (index - 1, index, index + 1))
    curvature = left - 2 * middle + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0  # parabolic peak
    return (index + offset) * sample_rate / size


def to_midi(hertz: float) -> int:
    return round(69 + 12 * torch.log2(torch.tensor(hertz / 440.0)).item())


def describe(audio: torch.Tensor, sample_rate: int = 16000) -> Description:
    """A clip (1, S) or (S,) float -> Description(note, rhythm, num_onsets, pitches)."""
    mono = torch.as_tensor(audio).detach().float().cpu().reshape(-1, audio.shape[-1]).mean(0)  # (S,)
    spans = note_spans(mono, sample_rate)
    attack, length = round(0.010 * sample_rate), round(0.100 * sample_rate)
    pitches = []
    for start, end in spans:
        first = min(start + attack, max(start, end - length))
        segment = mono[first:min(end, first + length)]  # (<= 100 ms,)
        pitches.append(to_midi(pitch(segment, sample_rate)) if len(segment) >= 64 else -1)
    note = NAMES.get(pitches[0]) if pitches else None
    rhythm = None
    if len(pitches) == 1:
        rhythm = "once"
    elif len(pitches) == 4:
        steps = [b - a for a, b in zip(pitches, pitches[1:])]
        if all(abs(p - pitches[0]) <= 1 for p in pitches):
            rhythm = "four times"
        elif all(step > 0 for step in steps) and pitches[-1] - pitches[0] >= 6:
            rhythm = "rising"
    return Description(note, rhythm, len(pitches), tuple(pitches))


def check(audio: torch.Tensor, note: str, rhythm: str, sample_rate: int = 16000) -> dict[str, bool]:
    """{"pitch", "rhythm", "all"}: does the clip play `note` (its first note) with `rhythm`?"""
    found = describe(audio, sample_rate)
    matches = {"pitch": found.note == note, "rhythm": found.rhythm == rhythm}
    return {**matches, "all": all(matches.values())}
