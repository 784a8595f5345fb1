"""What every data source of one medium shares: its `modality` and the item shape its settings give.

A source subclasses the base of its medium, so `source_data_shape` (and through it the model's
token grid) never needs to know which source it is: images (3, size, size), clips
(num_frames, 3, size, size), audio (1, round(seconds * sample_rate)).
"""

from __future__ import annotations

import torch


class ImageSource(torch.utils.data.Dataset):
    modality = "image"

    @classmethod
    def data_shape(cls, *, size: int, **_: object) -> tuple[int, int, int]:
        return (3, size, size)


class VideoSource(torch.utils.data.Dataset):
    modality = "video"

    @classmethod
    def data_shape(cls, *, size: int, num_frames: int, **_: object) -> tuple[int, int, int, int]:
        return (num_frames, 3, size, size)


class AudioSource(torch.utils.data.Dataset):
    modality = "audio"

    @classmethod
    def data_shape(cls, *, seconds: float = 1.0, sample_rate: int = 16000, **_: object) -> tuple[int, int]:
        return (1, round(seconds * sample_rate))
