"""Data sources: the HuggingFace folder convention, Fashion-MNIST from its Debian package, the registry."""

import gzip
import json
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from mmar.data import DATA_SOURCES, make_source, source_data_shape
from mmar.data.fashion_mnist import CLASSES, DEFAULT_ROOT, FashionMNIST, FashionMNISTNotFound
from mmar.data.folder import ImageFolder


def write_metadata(folder, lines):
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def solid(width, height, color):
    return Image.new("RGB", (width, height), color)


@pytest.fixture
def user_folder(tmp_path):
    """3 good images (one non-square, one in a subfolder) + a corrupt, a truncated and a missing file + a bad line."""
    solid(40, 40, (255, 0, 0)).save(tmp_path / "red.png")
    # 96x32: thirds red | green | blue; a centre crop after resizing the shorter side keeps green only
    wide = np.zeros((32, 96, 3), dtype=np.uint8)  # (H, W, 3)
    wide[:, :32, 0], wide[:, 32:64, 1], wide[:, 64:, 2] = 255, 255, 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    (tmp_path / "sub").mkdir()
    solid(20, 50, (0, 0, 255)).convert("L").save(tmp_path / "sub" / "grey.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    data = (tmp_path / "red.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    write_metadata(tmp_path, [
        json.dumps({"file_name": "red.png", "text": "a red square"}),
        json.dumps({"file_name": "corrupt.png", "text": "broken"}),
        "{this is not json",
        json.dumps({"file_name": "wide.png", "text": "a wide picture"}),
        "",
        json.dumps({"file_name": "missing.png", "text": "gone"}),
        json.dumps({"file_name": "truncated.png", "text": "half a file"}),
        json.dumps({"file_name": "../outside.png", "text": "escapes the folder"}),
        json.dumps({"file_name": "sub/grey.jpg", "text": "a grey tall picture"}),
    ])
    return tmp_path


def test_folder_skips_bad_entries_with_one_warning(user_folder, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolder(user_folder, size=32)
    assert len(dataset) == 3 and dataset.num_skipped == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "skipped 5" in warnings[0].getMessage() and "corrupt.png" in warnings[0].getMessage()
    captions = [dataset[i][1] for i in range(len(dataset))]
    assert captions == ["a red square", "a wide picture", "a grey tall picture"]
    for index in range(len(dataset)):
        image, _ = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32  # (3, H, W)
        assert image.min() >= -1 and image.max() <= 1
    red = dataset[0][0]
    assert torch.allclose(red[:, 16, 16], torch.tensor([1.0, -1.0, -1.0]))
    grey = dataset[2][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey replicated to RGB


def test_folder_resizes_shorter_side_and_centre_crops(user_folder):
    image, _ = ImageFolder(user_folder, size=16)[1]  # the 96x32 red|green|blue picture
    assert image.shape == (3, 16, 16)  # (3, H, W)
    # resized to 48x16, cropped to its middle 16 columns: green (bicubic smears one column at each seam)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 16, 14)  # (3, H, W-2)
    assert torch.allclose(image[:, :, 1:-1], green, atol=0.02)
    assert image[1].min() > 0.8 and image[[0, 2]].max() < -0.8
    tall, _ = ImageFolder(user_folder, size=24)[2]  # 20x50 -> 24x60 -> centre 24x24
    assert tall.shape == (3, 24, 24)


def test_folder_limit(user_folder):
    assert len(ImageFolder(user_folder, limit=2)) == 2


def test_folder_without_usable_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        ImageFolder(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"nope")
    write_metadata(tmp_path, [json.dumps({"file_name": "bad.png", "text": "x"}), "not json"])
    with pytest.raises(ValueError, match="no usable .* metadata.jsonl needs lines like") as error:
        ImageFolder(tmp_path)
    assert "2 skipped" in str(error.value)
    write_metadata(tmp_path, [])
    with pytest.raises(ValueError, match="no usable"):
        ImageFolder(tmp_path)


def write_idx(path, magic, array):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_synthetic_idx_files(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)  # (N, 28, 28)
    images[1] = 255
    images[2, :, 14:] = 255
    labels = np.array([9, 0, 7, 8], dtype=np.uint8)  # (N,)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, labels)  # uncompressed works too
    dataset = FashionMNIST("test", size=28, root=tmp_path)
    assert len(dataset) == 4
    assert [dataset[i][1] for i in range(4)] == [
        "a photo of a ankle boot", "a photo of a t-shirt", "a photo of a sneaker", "a photo of a bag"]
    assert torch.equal(dataset[0][0], torch.full((3, 28, 28), -1.0))
    assert torch.equal(dataset[1][0], torch.full((3, 28, 28), 1.0))
    resized, _ = FashionMNIST("test", size=32, root=tmp_path, limit=3)[2]
    assert resized.shape == (3, 32, 32) and resized[:, :, :14].max() == -1 and resized[:, :, 18:].min() == 1
    assert len(FashionMNIST("test", root=tmp_path, limit=2)) == 2
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2051, images)  # wrong kind of file
    with pytest.raises(ValueError, match="magic"):
        FashionMNIST("test", root=tmp_path)


def test_fashion_mnist_missing_package_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as error:
        FashionMNIST(root=tmp_path)
    assert isinstance(error.value, FashionMNISTNotFound)
    message = str(error.value)
    assert "\n" not in message and "dataset-fashion-mnist" in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    monkeypatch.setenv("MMAR_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(FashionMNISTNotFound, match="dataset-fashion-mnist"):
        make_source("fashion_mnist", size=32, num_items=10, seed=0, path=None)


def test_fashion_mnist_from_the_debian_package(monkeypatch):
    """The real data. The project's test machines install `dataset-fashion-mnist` (see the README)."""
    monkeypatch.delenv("MMAR_FASHION_MNIST_DIR", raising=False)
    assert (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(), (
        "install the Debian package: sudo apt-get install -y dataset-fashion-mnist")
    test = FashionMNIST("test", size=32, limit=200)
    assert len(test) == 200
    # the published test set starts: ankle boot, pullover, trouser, trouser, shirt
    assert [test[i][1] for i in range(5)] == [
        "a photo of a ankle boot", "a photo of a pullover", "a photo of a trouser", "a photo of a trouser",
        "a photo of a shirt"]
    labels = set()
    for index in range(len(test)):
        image, text = test[index]
        assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1  # (3, H, W)
        assert torch.equal(image[0], image[2])
        assert text.removeprefix("a photo of a ") in CLASSES
        labels.add(text)
    assert len(labels) == 10
    assert FashionMNIST("test", size=28, limit=1)[0][0].shape == (3, 28, 28)
    train = make_source("fashion_mnist", size=32, num_items=50, seed=0, path=None)
    assert len(train) == 50 and train[0][1] == "a photo of a ankle boot"


def test_registry_and_make_source(user_folder):
    assert {"shapes", "fashion_mnist", "folder", "notes", "audio_folder", "speech", "moving_shapes", "video_folder"} <= set(DATA_SOURCES)
    shapes = make_source("shapes", size=48, num_items=7, seed=1, path=None)
    assert len(shapes) == 7 and shapes[0][0].shape == (3, 48, 48)
    assert shapes[3][1] == make_source("shapes", size=48, num_items=7, seed=1, path=None)[3][1]
    folder = make_source("folder", size=16, num_items=None, seed=0, path=str(user_folder))
    assert len(folder) == 3 and folder[0][0].shape == (3, 16, 16)
    assert len(make_source("folder", size=16, num_items=1, seed=0, path=str(user_folder))) == 1
    with pytest.raises(ValueError, match="shapes, fashion_mnist, folder, "):
        make_source("imagenet", size=32, num_items=10, seed=0, path=None)
    with pytest.raises(ValueError, match="path"):
        make_source("folder", size=32, num_items=10, seed=0, path=None)
    with pytest.raises(ValueError):
        make_source("shapes", size=32, num_items=0, seed=0, path=None)


@pytest.fixture
def sound_folder(tmp_path):
    """Two short WAV files for the audio folder source."""
    import soundfile

    folder = tmp_path / "sounds"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        soundfile.write(folder / name, np.zeros((800, 1), dtype=np.float32), 16000, subtype="PCM_16")
    write_metadata(folder, [json.dumps({"file_name": n, "text": f"sound {n}"}) for n in ("a.wav", "b.wav", "a.wav")])
    return folder


@pytest.fixture
def user_clips(tmp_path):
    """3 clips written by mmar (two MP4, one GIF) in a video folder."""
    from mmar.data.moving_shapes import render_clip
    from mmar.media import save_media

    names = ["a.mp4", "b.mp4", "c.gif"]
    for name in names:
        save_media("video", render_clip("red", "circle", "left", size=32, num_frames=6), tmp_path / "clips" / name)
    write_metadata(tmp_path / "clips", [json.dumps({"file_name": n, "text": "a red circle moving left"}) for n in names])
    return tmp_path / "clips"


@pytest.mark.parametrize("name", sorted(DATA_SOURCES))
def test_every_source_yields_media_and_caption(name, user_folder, sound_folder, user_clips):
    """The data-source contract, over the whole registry: (media of `source_data_shape`, float in [-1, 1],
    caption str): images (3, H, W), clips (F, 3, H, W), audio (1, S)."""
    from mmar.data import source_data_shape

    settings = {"size": 24, "seconds": 0.5, "sample_rate": 8000, "num_frames": 5, "frame_stride": 1}
    path = {"folder": str(user_folder), "audio_folder": str(sound_folder), "video_folder": str(user_clips)}.get(name)
    source = make_source(name, num_items=3, seed=0, path=path, **settings)
    assert isinstance(source, DATA_SOURCES[name]) and len(source) == 3
    expected = {"image": (3, 24, 24), "audio": (1, 4000), "video": (5, 3, 24, 24)}[DATA_SOURCES[name].modality]
    assert source_data_shape(name, **settings) == expected
    for index in range(len(source)):
        media, text = source[index]
        assert isinstance(media, torch.Tensor) and media.dtype == torch.float32
        assert media.shape == expected and media.min() >= -1 and media.max() <= 1
        assert isinstance(text, str) and text
