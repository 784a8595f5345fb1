"""A folder of the user's clips (MP4 / GIF written by mmar itself), read with PyAV; bad files are skipped."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mmar.data import make_source
from mmar.data.moving_shapes import render_clip
from mmar.data.video_folder import VideoFolder
from mmar.media import save_media


def write_folder(root, entries):
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": t}) + "\n" for n, t in entries))


def test_mp4_and_gif_clips_are_resized_cropped_and_strided(tmp_path):
    clip = render_clip("red", "square", "right", size=64, num_frames=9)  # (9, 3, 64, 64)
    strip = torch.full((9, 3, 64, 16), 0.5)  # grey strips on both sides: the centre crop must cut them off
    wide = torch.cat([strip, clip, strip], dim=3)  # (9, 3, 64, 96)
    save_media("video", wide, tmp_path / "clips" / "wide.mp4", fps=8)
    save_media("video", clip, tmp_path / "clips" / "small.gif", fps=8)
    write_folder(tmp_path / "clips", [("wide.mp4", "a red square moving right"), ("small.gif", "gif")])
    dataset = make_source("video_folder", num_items=None, seed=0, path=str(tmp_path / "clips"), size=32,
                          num_frames=5, frame_stride=2)
    assert len(dataset) == 2 and dataset.num_skipped == 0 and dataset.modality == "video"
    expected = torch.nn.functional.interpolate(clip[::2], size=(32, 32), mode="area")  # (5, 3, 32, 32)
    for index in (0, 1):
        frames, _ = dataset[index]
        assert frames.shape == (5, 3, 32, 32) and frames.min() >= -1 and frames.max() <= 1
        # Stride 2 keeps source frames 0, 2, 4, 6, 8 (the square where it was then), without the strips;
        # H.264 and bicubic resizing blur edges a little.
        error = (frames - expected).abs().mean(dim=(1, 2, 3))  # (5,)
        assert error.max() < 0.06, (index, error)
        shifted = (frames[1:] - expected[:-1]).abs().mean(dim=(1, 2, 3))  # (4,) one kept frame off
        assert shifted.min() > 2 * error.max()
    assert dataset[0][1] == "a red square moving right"


def test_bad_files_are_skipped_with_one_warning_and_all_bad_is_an_error(tmp_path, caplog):
    root = tmp_path / "clips"
    save_media("video", render_clip("blue", "circle", "up", num_frames=9), root / "good.mp4")
    save_media("video", render_clip("blue", "circle", "up", num_frames=3), root / "short.mp4")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (root / "empty.webm").write_bytes(b"")
    write_folder(root, [("corrupt.mp4", "x"), ("good.mp4", "a blue circle moving up"), ("short.mp4", "x"),
                        ("empty.webm", "x"), ("missing.avi", "x")])
    with caplog.at_level(logging.WARNING):
        dataset = VideoFolder(root, size=32, num_frames=9)
    assert len(dataset) == 1 and dataset.num_skipped == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 unusable entries" in warnings[0].getMessage()
    write_folder(root, [("short.mp4", "x"), ("empty.webm", "x")])
    with pytest.raises(ValueError, match=r"no usable \(video, caption\) pair .*0001.mp4.*\(2 skipped, first: line 1: 3 frames, needs 9"):
        VideoFolder(root, size=32, num_frames=9)
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        VideoFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs path="):
        make_source("video_folder", num_items=None, seed=0, size=32, num_frames=9)
