"""mmar.media writes real files that real readers (PIL, PyAV, soundfile, trimesh) open correctly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmar import media
from mmar.images import to_pil


def flat_clip(num_frames: int, height: int, width: int, colour=(0.6, -0.2, -0.8)) -> torch.Tensor:
    return torch.tensor(colour).view(1, 3, 1, 1).expand(num_frames, 3, height, width).clone()  # (T, 3, H, W)


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_import_stays_light():
    code = "import sys, mmar.media; print([m for m in ('av', 'soundfile', 'trimesh') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_image_png_round_trip(tmp_path):
    image = torch.rand(3, 5, 7) * 2 - 1  # (3, H, W)
    path = media.save_media("image", image, tmp_path / "deep" / "a.png")  # parent is created
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        assert np.array_equal(np.asarray(reopened.convert("RGB")), np.asarray(to_pil(image)))
    assert files_in(path.parent) == ["a.png"]


@pytest.mark.parametrize("height, width", [(8, 12), (7, 9)])
def test_video_mp4_frames_size_and_colour(tmp_path, height, width):
    import av

    clip = flat_clip(5, height, width)
    path = media.save_media("video", clip, tmp_path / "clip.mp4", fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == 5
    assert frames[0].shape == (height + height % 2, width + width % 2, 3)
    expected = np.asarray(to_pil(clip[0]))  # (H, W, 3) uint8
    error = np.abs(np.stack(frames)[:, :height, :width].astype(float) - expected).mean()
    assert error < 6, error
    assert files_in(tmp_path) == ["clip.mp4"]


def test_video_gif_has_every_frame(tmp_path):
    clip = torch.stack([torch.full((3, 6, 6), -1 + 0.5 * t) for t in range(4)])  # (T, 3, H, W), frames differ
    path = media.save_media("video", clip, tmp_path / "clip.gif", fps=4)
    with Image.open(path) as reopened:
        assert reopened.format == "GIF"
        assert reopened.n_frames == 4
        assert reopened.info["duration"] == 250
        assert reopened.info["loop"] == 0


@pytest.mark.parametrize("shape", [(300,), (2, 300)])
def test_wav_is_bit_exact_pcm16(tmp_path, shape):
    import soundfile

    audio = torch.randn(shape) * 0.7  # some samples beyond [-1, 1]: they are clipped
    path = media.save_media("audio", audio, tmp_path / "a.wav", sample_rate=22050)
    samples, rate = soundfile.read(path, dtype="int16", always_2d=True)  # (S, C)
    assert rate == 22050
    clipped = audio.clamp(-1, 1).reshape(-1, 300).T.numpy()  # (S, C)
    assert np.array_equal(samples, np.round(clipped * 32767).astype(np.int16))
    assert soundfile.info(path).subtype == "PCM_16"


def read_obj(path) -> tuple[list[str], list[str]]:
    lines = path.read_text().splitlines()
    return [l for l in lines if l.startswith("v ")], [l for l in lines if l.startswith("f ")]


def test_obj_single_voxel(tmp_path):
    grid = torch.zeros(3, 3, 3)
    grid[1, 1, 1] = 1
    path = media.save_media("voxels", grid, tmp_path / "cube.obj")
    vertices, faces = read_obj(path)
    assert len(vertices) == 8 and len(faces) == 6
    assert all(len(f.split()) == 5 for f in faces)  # quads
    assert (tmp_path / "cube.png").is_file()
    assert files_in(tmp_path) == ["cube.obj", "cube.png"]


def test_obj_adjacent_voxels_share_no_faces(tmp_path):
    grid = torch.zeros(2, 2, 2, dtype=torch.bool)
    grid[0, 0, :] = True  # two cubes side by side
    vertices, faces = read_obj(media.save_media("voxels", grid, tmp_path / "pair.obj"))
    assert len(vertices) == 12 and len(faces) == 10


@pytest.mark.parametrize("cells", [[(0, 0, 0)], [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0)]])
def test_glb_is_watertight_with_outward_normals(tmp_path, cells):
    import trimesh

    grid = torch.zeros(2, 2, 2)
    for cell in cells:
        grid[cell] = 1
    path = media.save_media("voxels", grid, tmp_path / "shape.glb")
    mesh = trimesh.load(path, force="mesh")
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(len(cells))  # positive volume: the faces point outwards
    assert (tmp_path / "shape.png").is_file()


@pytest.mark.parametrize("medium, sample", [
    ("image", torch.rand(3, 4, 5)),
    ("video", torch.rand(3, 3, 4, 5)),
    ("audio", torch.rand(2, 100)),
    ("voxels", torch.rand(3, 4, 5)),
])
def test_preview_is_a_small_rgb_picture(medium, sample):
    picture = media.to_preview(medium, sample * 2 - 1)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    assert 0 < picture.width <= 400 and 0 < picture.height <= 200
    assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 1  # something is drawn


def test_previews_show_the_sample():
    image = torch.rand(3, 4, 5) * 2 - 1  # (3, H, W)
    assert np.array_equal(np.asarray(media.to_preview("image", image)), np.asarray(to_pil(image)))
    strip = media.to_preview("video", torch.rand(9, 3, 4, 5) * 2 - 1)
    assert strip.size == (4 * 5, 4)  # 4 frames side by side
    grid = torch.zeros(4, 4, 4)
    grid[0, 0, 0] = 1
    view = np.asarray(media.to_preview("voxels", grid).convert("L"))  # 3 views, each 96 px
    assert view[:24, :24].max() < 255 and view[30:, 30:90].min() == 255  # only the corner cell is dark


@pytest.mark.parametrize("medium, sample, expected", [
    ("image", torch.rand(4, 4), "(3, H, W)"),
    ("image", torch.rand(1, 4, 4), "(3, H, W)"),
    ("image", torch.randint(0, 255, (3, 4, 4)), "(3, H, W)"),
    ("video", torch.rand(3, 4, 4), "(T, 3, H, W)"),
    ("audio", torch.rand(300, 2), "(C, S)"),
    ("voxels", torch.rand(4, 4), "(D, H, W)"),
    ("image", torch.full((3, 2, 2), float("nan")), "(3, H, W)"),
    ("video", flat_clip(2, 4, 4).index_fill_(0, torch.tensor([1]), float("nan")), "(T, 3, H, W)"),
    ("audio", torch.tensor([0.0, float("inf")]), "(C, S)"),
    ("voxels", torch.full((2, 2, 2), float("nan")), "(D, H, W)"),
])
def test_bad_input_is_a_one_line_value_error(tmp_path, medium, sample, expected):
    with pytest.raises(ValueError) as error:
        media.save_media(medium, sample, tmp_path / media.default_name(medium, 0))
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert files_in(tmp_path) == []


def test_unknown_medium_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="audio, image, video, voxels"):
        media.save_media("smell", torch.zeros(3), tmp_path / "x")
    with pytest.raises(ValueError, match="known media"):
        media.default_name("smell", 0)


def test_default_names():
    assert [media.default_name(m, 7) for m in ("image", "video", "audio", "voxels")] == [
        "007.png", "007.mp4", "007.wav", "007.obj"]
    assert set(media.WRITERS) == {"image", "video", "audio", "voxels"}


def test_failed_png_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")
    real_save = Image.Image.save

    def save_half_then_crash(self, file, *args, **kwargs):
        real_save(self, file, *args, **kwargs)
        with open(file, "r+b") as handle:
            handle.truncate(10)  # a half-written file on disk...
        raise OSError("disk full")  # ...and then the write dies

    monkeypatch.setattr(Image.Image, "save", save_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        media.save_media("image", torch.zeros(3, 4, 4), path)
    assert path.read_bytes() == b"old"
    assert files_in(tmp_path) == ["a.png"]


def test_failed_mp4_write_leaves_nothing(tmp_path, monkeypatch):
    import av

    calls = []

    def encode_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("encoder crashed")
        return real_from_ndarray(*args, **kwargs)

    real_from_ndarray = av.VideoFrame.from_ndarray
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", encode_then_crash)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        media.save_media("video", flat_clip(5, 4, 4), tmp_path / "out" / "clip.mp4")
    assert files_in(tmp_path / "out") == []
