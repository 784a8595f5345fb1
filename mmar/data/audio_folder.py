"""A user's captioned sounds in the HuggingFace "folder" convention (datasets' AudioFolder).

    my_sounds/
      metadata.jsonl      {"file_name": "0001.wav", "text": "a dog barking"}
      0001.wav            (WAV, FLAC or OGG; file_name may also name a subfolder)

Files are read with soundfile (libsndfile), mixed down to mono, resampled with torchaudio to the
configured rate and cut or zero-padded to `seconds`. Every entry is decoded once when the dataset
is built, so iteration never meets a broken file: unreadable entries are skipped, counted in
`num_skipped` and reported in ONE warning line; a folder with no usable entry is a clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmar.data.folder import metadata_entry, usable_entries
from mmar.data.media_source import AudioSource

EXTENSIONS = (".wav", ".flac", ".ogg")


def load_audio(path: str | os.PathLike, sample_rate: int, num_samples: int) -> torch.Tensor:
    """Read a WAV/FLAC/OGG file -> (1, num_samples) float in [-1, 1] at `sample_rate`, mono.

    Longer clips keep their start; shorter ones are padded with silence. A file that cannot be
    decoded, is empty or holds non-finite samples raises ValueError naming it."""
    import soundfile  # lazy: loads libsndfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (RuntimeError, soundfile.LibsndfileError) as error:  # LibsndfileError is a RuntimeError in new versions
        raise ValueError(f"{Path(path).name}: not a readable WAV/FLAC/OGG file ({error})") from error
    if samples.size == 0:
        raise ValueError(f"{Path(path).name}: the file holds no samples")
    mono = torch.from_numpy(samples).mean(1)  # (S,)
    if not torch.isfinite(mono).all():
        raise ValueError(f"{Path(path).name}: the file holds NaN or infinite samples")
    if rate != sample_rate:
        import torchaudio  # lazy: only resampling needs it

        mono = torchaudio.functional.resample(mono, int(rate), int(sample_rate))  # (S * sample_rate / rate,)
    mono = mono[:num_samples]  # (<= num_samples,)
    mono = torch.nn.functional.pad(mono, (0, num_samples - len(mono)))  # (num_samples,)
    return mono.clamp(-1, 1)[None].contiguous()  # (1, num_samples)


class AudioFolder(AudioSource):
    """Items: (audio (1, round(seconds * sample_rate)) float in [-1, 1], caption) from `root/metadata.jsonl`.

    `limit` keeps the first usable entries only (and decodes only those)."""


    @classmethod
    def build(cls, *, num_items: int | None, seed: int, path: str | None, seconds: float = 1.0,
              sample_rate: int = 16000, **_: object) -> "AudioFolder":
        if path is None:
            raise ValueError("the audio_folder source needs path= a folder with metadata.jsonl and its sound files "
                             "(--set data.path=DIR)")
        return cls(path, seconds=seconds, sample_rate=sample_rate, limit=num_items)

    def __init__(self, root: str | os.PathLike, seconds: float = 1.0, sample_rate: int = 16000,
                 limit: int | None = None) -> None:
        if seconds <= 0 or sample_rate < 1:
            raise ValueError(f"need seconds > 0 and a positive sample rate, got {seconds} s at {sample_rate} Hz")
        self.root, self.sample_rate = Path(root), int(sample_rate)
        self.num_samples = round(seconds * sample_rate)
        self.items, self.num_skipped = usable_entries(self.root, self._validate, limit, "AudioFolder", "audio")

    def _validate(self, root: Path, line: str) -> tuple[Path, str]:
        path, text = metadata_entry(root, line)
        if path.suffix.lower() not in EXTENSIONS:
            raise ValueError(f"{path.name}: not a {'/'.join(e[1:].upper() for e in EXTENSIONS)} file")
        load_audio(path, self.sample_rate, self.num_samples)  # a full decode: truncated files fail here
        return path, text

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, text = self.items[index]
        return load_audio(path, self.sample_rate, self.num_samples), text  # (1, S), str
