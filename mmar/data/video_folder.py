"""A user's captioned clips in the HuggingFace "folder" convention, read with PyAV.

    my_clips/
      metadata.jsonl      {"file_name": "0001.mp4", "text": "a red circle moving left"}
      0001.mp4            MP4, WebM, AVI, GIF, ... anything FFmpeg (bundled with PyAV) decodes

Frame sampling: the first video stream is decoded from its first frame, and frames 0, s, 2s, ...
are kept until `num_frames` are in hand, s = `frame_stride` (`--set data.frame_stride=2` keeps
every other frame: the clip spans 1 + (num_frames - 1) * s source frames). Each kept frame's
shorter side is resized to `size` (bicubic) and the centre is cropped: (F, 3, size, size) in [-1, 1].

Every entry is decoded once when the dataset is built and kept in memory as uint8 (a 9-frame
32x32 clip is 27 kB), so iteration never meets a broken file: an unreadable, empty or too-short
file is skipped, counted in `num_skipped`, and reported in ONE warning line; a folder with no
usable clip is a clear error (`mmar.data.folder.usable_entries`, shared with images and audio). PyAV is imported only here, inside the functions that read files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmar.data.folder import fit_square, metadata_entry, usable_entries
from mmar.data.media_source import VideoSource
from mmar.images import MAX_PIXELS


def load_clip(path: str | os.PathLike, size: int, num_frames: int, frame_stride: int = 1) -> torch.Tensor:
    """Decode frames 0, s, 2s, ... of a video file -> (num_frames, 3, size, size) float in [-1, 1].

    A ValueError when the file has fewer than 1 + (num_frames - 1) * frame_stride frames; PyAV's
    own errors (av.error.*) for files it cannot open or decode.
    """
    import av  # lazy: PyAV bundles FFmpeg and is slow to import

    needed = 1 + (num_frames - 1) * frame_stride
    frames, seen = [], 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if (stream.width or 0) * (stream.height or 0) > MAX_PIXELS:  # refused before any frame is decoded
            raise ValueError(f"{stream.width}x{stream.height} frames, more than the {MAX_PIXELS:,} pixels mmar decodes")
        for frame in container.decode(container.streams.video[0]):
            if seen % frame_stride == 0:
                frames.append(fit_square(frame.to_image(), size))  # (3, size, size)
            seen += 1
            if len(frames) == num_frames:
                break
    if len(frames) < num_frames:
        raise ValueError(f"{seen} frames, needs {needed} ({num_frames} frames at stride {frame_stride})")
    return torch.stack(frames)  # (F, 3, size, size)


class VideoFolder(VideoSource):
    """Items: (clip (F, 3, size, size) float in [-1, 1], caption) from `root/metadata.jsonl`.

    `limit` keeps the first usable entries only (and decodes only those).
    """


    @classmethod
    def build(cls, *, size: int, num_frames: int, frame_stride: int = 1, num_items: int | None, seed: int,
              path: str | None, **_: object) -> "VideoFolder":
        if path is None:
            raise ValueError("the video_folder source needs path= a folder with metadata.jsonl and its clips "
                             "(--set data.path=DIR)")
        return cls(path, size=size, num_frames=num_frames, frame_stride=frame_stride, limit=num_items)

    def __init__(self, root: str | os.PathLike, size: int = 32, num_frames: int = 9, frame_stride: int = 1,
                 limit: int | None = None) -> None:
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"num_frames and frame_stride must be positive, got {num_frames} and {frame_stride}")
        self.root, self.size, self.num_frames, self.frame_stride = Path(root), size, num_frames, frame_stride

        def decode(root: Path, line: str) -> tuple[torch.Tensor, str]:
            path, text = metadata_entry(root, line)
            clip = load_clip(path, size, num_frames, frame_stride)  # (F, 3, size, size)
            return ((clip + 1) * 127.5).round().byte(), text  # (F, 3, size, size) uint8

        items, self.num_skipped = usable_entries(self.root, decode, limit, "VideoFolder", "video")
        self.clips = [clip for clip, _ in items]
        self.captions = [text for _, text in items]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.clips[index].float() / 127.5 - 1, self.captions[index]  # (F, 3, size, size)
