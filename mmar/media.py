"""Decoded samples -> files a person opens (PNG, MP4/GIF, WAV, OBJ/GLB) and small previews for grids.

One `Writer` per tokenizer medium in `WRITERS`; each takes ONE sample (no batch dimension). Media
libraries (PyAV, soundfile, trimesh) are imported inside the functions that use them, so
`import mmar.media` costs only torch, numpy and PIL. Every file is written to a temporary name in
the destination folder and moved into place with `os.replace`, so a crash never leaves half a file.
The voxel mesh is the classic "exposed faces of occupied cubes" surface (as in Minecraft-style
voxel meshers), written out by hand.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmar.images import to_pil

PREVIEW_SIZE = 96  # px: the cell size a preview is drawn at (captioned_grid's default)


class Writer(NamedTuple):
    extension: str  # default file suffix, e.g. ".png"
    save: Callable[..., Path]  # save(sample, path, **options) -> Path
    preview: Callable[[torch.Tensor], Image.Image]  # preview(sample) -> small PIL image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a saved sample should read like any file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _checked(sample, medium: str, expected: str, ndims: tuple[int, ...], allow_bool: bool = False) -> torch.Tensor:
    """Return `sample` as a CPU float tensor, or raise a one-line ValueError naming `expected`."""
    tensor = torch.as_tensor(sample).detach().cpu()
    good_dtype = tensor.is_floating_point() or (allow_bool and tensor.dtype == torch.bool)
    if tensor.dim() not in ndims or not good_dtype or tensor.numel() == 0:
        raise ValueError(f"{medium} sample must be {expected}, got shape {tuple(tensor.shape)} dtype {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{medium} sample must be {expected} with finite values, got NaN or inf")
    return tensor


# ---- image -------------------------------------------------------------------------------------

def _image(sample) -> torch.Tensor:
    image = _checked(sample, "image", "(3, H, W) float in [-1, 1]", (3,))
    if image.shape[0] != 3:
        raise ValueError(f"image sample must be (3, H, W) float in [-1, 1], got shape {tuple(image.shape)}")
    return image  # (3, H, W)


def save_image(sample, path: str | Path) -> Path:
    """(3, H, W) float in [-1, 1] -> PNG."""
    picture = to_pil(_image(sample))
    with atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")
    return Path(path)


def preview_image(sample) -> Image.Image:
    return to_pil(_image(sample))


# ---- video -------------------------------------------------------------------------------------

def _video(sample) -> torch.Tensor:
    video = _checked(sample, "video", "(T, 3, H, W) float in [-1, 1]", (4,))
    if video.shape[1] != 3:
        raise ValueError(f"video sample must be (T, 3, H, W) float in [-1, 1], got shape {tuple(video.shape)}")
    return video  # (T, 3, H, W)


def _video_frames(video: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [-1, 1] -> (T, H, W, 3) uint8."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().byte()  # (T, 3, H, W)
    return frames.permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)


def save_video(sample, path: str | Path, fps: float = 8) -> Path:
    """(T, 3, H, W) float in [-1, 1] -> H.264 MP4 (yuv420p), or an animated GIF if `path` ends in .gif.

    yuv420p needs even sizes, so odd H or W are padded by repeating the last row / column."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = _video_frames(_video(sample))  # (T, H, W, 3)
    if Path(path).suffix.lower() == ".gif":
        pictures = [Image.fromarray(frame, mode="RGB") for frame in frames]
        with atomic_path(path) as temporary:
            pictures[0].save(temporary, format="GIF", save_all=True, append_images=pictures[1:],
                             loop=0, duration=max(1, round(1000 / fps)))
        return Path(path)
    import av  # lazy: PyAV bundles FFmpeg and is slow to import

    height, width = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")  # (T, H', W', 3)
    with atomic_path(path) as temporary:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))  # flush the frames the encoder still holds
    return Path(path)


def preview_video(sample, num_frames: int = 4) -> Image.Image:
    """A strip of up to `num_frames` evenly spaced frames, side by side."""
    frames = _video_frames(_video(sample))  # (T, H, W, 3)
    chosen = np.linspace(0, len(frames) - 1, min(num_frames, len(frames))).round().astype(int)
    return Image.fromarray(np.concatenate(list(frames[chosen]), axis=1), mode="RGB")  # (H, n*W, 3)


def video_grid(clips: list, captions: list[str], columns: int = 8, cell: int = PREVIEW_SIZE) -> torch.Tensor:
    """Clips (T, 3, H, W) in [-1, 1] (equal T) -> one captioned grid clip (T, 3, H', W'): frame k is
    `captioned_grid` of every clip's frame k, so the grid plays all samples side by side."""
    from mmar.images import captioned_grid, from_pil

    videos = [_video(clip) for clip in clips]
    lengths = {len(video) for video in videos}
    if len(lengths) != 1:
        raise ValueError(f"a video grid needs clips of one length, got {sorted(lengths)} frames")
    frames = [captioned_grid([to_pil(video[k]) for video in videos], captions, columns=columns, cell=cell)
              for k in range(lengths.pop())]
    return torch.stack([from_pil(frame) for frame in frames])  # (T, 3, H', W')


# ---- audio -------------------------------------------------------------------------------------

MAX_CHANNELS = 8  # more "channels" than this is almost surely a (S, C) tensor passed as (C, S)


def _audio(sample) -> torch.Tensor:
    expected = f"(C, S) with C <= {MAX_CHANNELS}, or (S,), float in [-1, 1]"
    audio = _checked(sample, "audio", expected, (1, 2))
    if audio.dim() == 1:
        audio = audio[None]  # (1, S)
    if audio.shape[0] > MAX_CHANNELS:
        raise ValueError(f"audio sample must be {expected}, got shape {tuple(audio.shape)}")
    return audio  # (C, S)


def pcm16(sample) -> np.ndarray:
    """(C, S) or (S,) float -> (S, C) int16, clipped to [-1, 1]: exactly what the WAV file holds."""
    audio = _audio(sample).clamp(-1, 1)  # (C, S)
    return (audio * 32767).round().to(torch.int16).T.contiguous().numpy()  # (S, C)


def save_audio(sample, path: str | Path, sample_rate: int = 16000) -> Path:
    """(C, S) or (S,) float in [-1, 1] -> 16-bit PCM WAV. `sample_rate` defaults to 16000 Hz; pass the
    tokenizer's rate, since a wrong one plays at the wrong pitch and speed."""
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
    samples = pcm16(sample)  # (S, C)
    import soundfile  # lazy: loads libsndfile

    with atomic_path(path) as temporary:
        soundfile.write(temporary, samples, int(sample_rate), format="WAV", subtype="PCM_16")
    return Path(path)


def spectrogram(sample, height: int = PREVIEW_SIZE, width: int = 2 * PREVIEW_SIZE) -> Image.Image:
    """A log-magnitude spectrogram (channels averaged; low frequencies at the bottom, dark = loud),
    resized to (width, height): Hann-windowed STFT with up to 512 bins' worth of FFT, 60 dB range."""
    mono = _audio(sample).clamp(-1, 1).mean(0)  # (S,)
    n_fft = 1 << min(9, max(3, int(np.log2(max(mono.numel(), 8)))))  # a power of two <= S, at most 512
    n_fft = min(n_fft, mono.numel()) if mono.numel() >= 8 else n_fft
    padded = torch.nn.functional.pad(mono, (0, max(0, n_fft - mono.numel())))  # (S',)
    window = torch.hann_window(n_fft)  # (n_fft,)
    power = torch.stft(padded, n_fft, hop_length=max(1, n_fft // 4), window=window, center=False,
                       return_complex=True).abs().pow(2)  # (F, frames)
    decibels = 10 * power.clamp_min(1e-10).log10()  # (F, frames)
    decibels = (decibels - decibels.max()).clamp_min(-60) / -60  # (F, frames) 0 = loudest, 1 = 60 dB below
    pixels = (decibels.flip(0) * 255).round().byte().numpy()  # (F, frames), low frequencies last
    return Image.fromarray(pixels, mode="L").resize((width, height), Image.BILINEAR).convert("RGB")


def preview_audio(sample, width: int = 2 * PREVIEW_SIZE, height: int = PREVIEW_SIZE) -> Image.Image:
    """The spectrogram (top three quarters) above the waveform's min/max envelope per pixel column
    (bottom quarter), channels averaged, drawn with PIL."""
    mono = _audio(sample).clamp(-1, 1).mean(0)  # (S,)
    strip = max(8, height // 4)
    columns = np.array_split(mono.numpy(), min(width, mono.numel()))
    picture = Image.new("RGB", (len(columns), height), "white")
    picture.paste(spectrogram(sample, height - strip, len(columns)), (0, 0))
    draw = ImageDraw.Draw(picture)
    middle = height - 1 - (strip - 1) / 2
    half = (strip - 1) / 2
    draw.line([(0, middle), (len(columns), middle)], fill=(200, 200, 200))
    for x, column in enumerate(columns):
        draw.line([(x, middle - column.max() * half), (x, middle - column.min() * half)], fill=(30, 90, 200))
    return picture


# ---- voxels ------------------------------------------------------------------------------------

def _occupancy(sample, threshold: float = 0.5) -> np.ndarray:
    grid = _checked(sample, "voxels", "(D, H, W) occupancy, float or bool", (3,), allow_bool=True)
    return (grid > threshold).numpy()  # (D, H, W) bool; a bool True is 1.0 > 0.5


def voxel_faces(occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) bool -> vertices (N, 3) float and quads (F, 4) int (0-based, counter-clockwise seen
    from outside) of the faces between an occupied cell and an empty one. Voxel (d, h, w) spans
    [d, d+1] x [h, h+1] x [w, w+1]; shared corners are one vertex, so a closed shape is watertight."""
    padded = np.pad(occupancy, 1)  # (D+2, H+2, W+2): outside the grid counts as empty
    corners = []
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3  # e_b x e_c = e_axis: the square below faces +axis
        square = np.zeros((4, 3))  # (4, 3)
        square[[1, 2], b] = 1
        square[[2, 3], c] = 1
        for step in (1, -1):
            neighbour = np.roll(padded, -step, axis=axis)[1:-1, 1:-1, 1:-1]  # (D, H, W)
            cells = np.argwhere(occupancy & ~neighbour).astype(float)  # (n, 3)
            quad = square if step == 1 else square[::-1]  # reversed order faces -axis
            offset = np.zeros(3)
            offset[axis] = step == 1
            corners.append(cells[:, None] + offset + quad)  # (n, 4, 3)
    corners = np.concatenate(corners)  # (F, 4, 3)
    vertices, inverse = np.unique(corners.reshape(-1, 3), axis=0, return_inverse=True)  # (N, 3), (4F,)
    return vertices, inverse.reshape(-1, 4)  # (N, 3), (F, 4)


def preview_voxels(sample, threshold: float = 0.5, cell: int = PREVIEW_SIZE) -> Image.Image:
    """Three max-projections (along D, H, W) side by side, shaded by depth: nearer cells darker."""
    occupancy = _occupancy(sample, threshold)  # (D, H, W)
    views = []
    for axis in range(3):
        depth = occupancy.shape[axis]
        first = np.where(occupancy.any(axis), occupancy.argmax(axis), depth)  # index of the first filled cell
        shade = np.where(first < depth, 40 + 160 * first / max(depth - 1, 1), 255).astype(np.uint8)  # (2-D)
        view = Image.fromarray(shade, mode="L").convert("RGB")
        scale = max(1, cell // max(view.size))
        views.append(view.resize((view.width * scale, view.height * scale), Image.NEAREST))
    picture = Image.new("RGB", (sum(v.width for v in views) + 4 * len(views), max(v.height for v in views)), "white")
    x = 0
    for view in views:
        picture.paste(view, (x, 0))
        x += view.width + 4
    return picture


def save_voxels(sample, path: str | Path, threshold: float = 0.5, preview: bool = True) -> Path:
    """(D, H, W) occupancy (cells > threshold are filled) -> OBJ of the exposed cube faces, or GLB
    (via trimesh) if `path` ends in .glb; plus `<stem>.png`, a 3-view preview, unless preview=False."""
    vertices, quads = voxel_faces(_occupancy(sample, threshold))  # (N, 3), (F, 4)
    path = Path(path)
    if path.suffix.lower() == ".glb":
        import trimesh  # lazy: heavy, and only GLB needs it

        triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])  # (2F, 3)
        mesh = trimesh.Trimesh(vertices, triangles, process=False)
        with atomic_path(path) as temporary:
            temporary.write_bytes(mesh.export(file_type="glb"))
    else:
        lines = [f"# {len(vertices)} vertices, {len(quads)} faces of occupied voxels"]
        lines += [f"v {x:g} {y:g} {z:g}" for x, y, z in vertices]
        lines += ["f " + " ".join(str(i + 1) for i in quad) for quad in quads]  # OBJ counts from 1
        with atomic_path(path) as temporary:
            temporary.write_text("\n".join(lines) + "\n")
    if preview:
        picture = preview_voxels(sample, threshold)
        with atomic_path(path.with_suffix(".png")) as temporary:
            picture.save(temporary, format="PNG")
    return path


# ---- registry ----------------------------------------------------------------------------------

WRITERS: dict[str, Writer] = {
    "image": Writer(".png", save_image, preview_image),
    "video": Writer(".mp4", save_video, preview_video),
    "audio": Writer(".wav", save_audio, preview_audio),
    "voxels": Writer(".obj", save_voxels, preview_voxels),
}


#: the file suffixes each medium's writer understands (the first is its default)
FILE_SUFFIXES: dict[str, tuple[str, ...]] = {"image": (".png",), "video": (".mp4", ".gif"), "audio": (".wav",),
                                              "voxels": (".obj", ".glb")}


def writer(medium: str) -> Writer:
    if medium not in WRITERS:
        raise ValueError(f"unknown medium {medium!r}; known media: {', '.join(sorted(WRITERS))}")
    return WRITERS[medium]


def save_media(medium: str, sample, path: str | Path, **options) -> Path:
    """Write ONE decoded sample of `medium` to `path` (see the save_* functions for options)."""
    return writer(medium).save(sample, path, **options)


def default_name(medium: str, index: int) -> str:
    """default_name("image", 0) -> "000.png"."""
    return f"{index:03d}{writer(medium).extension}"


def to_preview(medium: str, sample) -> Image.Image:
    """A small RGB picture of one sample, for captioned_grid."""
    return writer(medium).preview(sample)
