"""Pipeline save/load: identical outputs, integrity checks, prompt validation."""

import json

import pytest
import torch

from conftest import tiny_pipeline
from mmar.pipeline import Pipeline

FLOW = {"num_steps": 2}


def _options(head):
    return FLOW if head == "flow_matching" else {}


def test_save_then_load_gives_identical_images(tmp_path, head_name):
    pipeline = tiny_pipeline(head_name)
    before = pipeline(["a red circle at the top left"], num_images_per_prompt=2, seed=1, **_options(head_name))
    pipeline.save_pretrained(tmp_path / "p")
    loaded = Pipeline.from_pretrained(tmp_path / "p")
    after = loaded(["a red circle at the top left"], num_images_per_prompt=2, seed=1, **_options(head_name))
    assert loaded.head == head_name  # the head comes from the saved routing
    assert [im.tobytes() for im in before] == [im.tobytes() for im in after]
    assert before[0].size == (32, 32)
    manifest = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert manifest["routing"]["image"] == head_name
    assert all(not name.endswith((".pt", ".pth", ".bin", ".pkl")) for name in manifest["sha256"])


def test_truncated_or_altered_weights_are_clear_errors(tmp_path):
    tiny_pipeline("next_token").save_pretrained(tmp_path / "p")
    weights = tmp_path / "p" / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or altered"):
        Pipeline.from_pretrained(tmp_path / "p")
    altered = bytearray(data)
    altered[-5] ^= 0xFF
    weights.write_bytes(bytes(altered))
    with pytest.raises(ValueError, match="truncated or altered"):
        Pipeline.from_pretrained(tmp_path / "p")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        Pipeline.from_pretrained(tmp_path / "p")


def test_missing_or_incomplete_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline folder"):
        Pipeline.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="pipeline.json"):
        Pipeline.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "pipeline.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Pipeline.from_pretrained(tmp_path / "empty")


def test_prompt_validation():
    pipeline = tiny_pipeline("next_token")
    with pytest.raises(ValueError, match="empty"):
        pipeline("   ")
    with pytest.raises(ValueError, match="context"):
        pipeline("x" * 200)  # max_len 256 leaves 256 - 64 - 3 = 189 bytes
    with pytest.raises(ValueError, match="valid Unicode"):
        pipeline("bad \udcff byte")
    with pytest.raises(ValueError, match="at least 1"):
        pipeline("a red circle", num_images_per_prompt=0)


def test_save_is_atomic_over_an_existing_pipeline(tmp_path):
    first, second = tiny_pipeline("next_token", seed=0), tiny_pipeline("next_token", seed=1)
    first.save_pretrained(tmp_path / "p")
    second.save_pretrained(tmp_path / "p")
    loaded = Pipeline.from_pretrained(tmp_path / "p")
    assert torch.equal(loaded.model.token_embedding.weight, second.model.token_embedding.weight)
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
