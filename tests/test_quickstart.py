"""The quickstart end to end on a seconds-long recipe: every promised file is written and loadable."""

import json
import subprocess
import sys

import pytest
import torch

from mmar.pipeline import Pipeline
from trainers.quickstart import run_quickstart


@pytest.mark.parametrize("head", ["next_token", "next_scale", "flow_matching"])
def test_tiny_quickstart_writes_everything(head, tmp_path):
    out = tmp_path / "qs"
    report = run_quickstart(head, out, tiny=True, num_prompts=4, per_prompt=1)
    for name in ("samples.png", "curves.png", "report.md", "report.json", "pipeline/pipeline.json",
                 "tokenizer_run/config.json", "ar_run/config.json", "ar_run/metrics.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["prompt_following"]["count"] == 4 and set(saved["prompt_following"]) >= {"color", "shape", "position", "all"}
    assert 0 <= report["prompt_following"]["all"] <= 1 and saved["tokenizer"]["psnr"] > 0
    assert report["heads"] == {"image": head} and Pipeline.from_pretrained(out / "pipeline").head == head


@pytest.mark.parametrize("recipe", ["single", "joint_all", "audio"])
def test_a_bad_model_override_fails_before_any_tokenizer_trains(recipe, tmp_path):
    out = tmp_path / "qs"
    with pytest.raises(ValueError, match="do not divide"):
        run_quickstart("next_token", out, ["ar.model.num_heads=5"], tiny=True, recipe=recipe)
    assert not list(out.glob("tokenizer*/tokenizer"))  # nothing was trained


def test_quickstart_command_with_another_head(tmp_path):
    out = tmp_path / "qs"
    result = subprocess.run([sys.executable, "-m", "mmar.cli", "quickstart", "--head", "next_scale", "--tiny",
                             "--num-prompts", "2", "--per-prompt", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "all three" in result.stdout and f"mmar generate --model {out / 'pipeline'}" in result.stdout
    assert json.loads((out / "report.json").read_text())["heads"] == {"image": "next_scale"}


def test_tiny_video_quickstart_writes_everything(tmp_path):
    # next_token only: the flow head's video path is covered by tests/test_video_generate.py, and
    # its tiny quickstart costs ~3 minutes of CPU here.
    head = "next_token"
    from PIL import Image

    out = tmp_path / "video"
    report = run_quickstart(head, out, tiny=True, num_prompts=4, per_prompt=1, recipe="video")
    for name in ("samples.gif", "samples/000.png", "samples/003.png", "curves.png", "report.md", "report.json",
                 "pipeline/pipeline.json", "tokenizer_run/report_clips.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "samples.gif") as gif:
        assert gif.n_frames == 5  # the tiny recipe's 5-frame clips, four of them side by side
    with Image.open(out / "samples" / "000.png") as strip:
        assert strip.size == (5 * 16, 16)  # every frame of one 16x16 sample
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["prompt_following"]) == {"color", "shape", "direction", "all", "count"}
    assert saved["prompt_following"]["count"] == 4 and len(saved["tokenizer"]["psnr_per_frame"]) == 5
    assert report["heads"] == {"video": head} and Pipeline.from_pretrained(out / "pipeline").head == head
    assert "direction" in (out / "report.md").read_text()



def test_one_model_trains_on_images_and_clips_and_makes_both(tmp_path):
    """The joint_video recipe's core at the smallest size: one image run and one video run, one backbone.

    (The full `--recipe joint_video --tiny` adds the next_scale and flow image runs the joint tests
    already cover, and takes ~9 minutes on a shared 2-core CPU, so it stays out of the suite.)"""
    from trainers.ar import train_ar
    from trainers.recipes import JOINT_VIDEO_RUNS, tiny_joint_video, tiny_tokenizer, tiny_video_tokenizer
    from trainers.tokenizer import train_tokenizer

    assert JOINT_VIDEO_RUNS["video"] == "next_token"
    tokenizers = {"image_token": str(train_tokenizer(tiny_tokenizer("next_token", str(tmp_path / "image")))),
                  "video": str(train_tokenizer(tiny_video_tokenizer("next_token", str(tmp_path / "video"))))}
    config = tiny_joint_video(str(tmp_path / "ar"), {**tokenizers, "image_scale": "", "image_flow": ""})
    config.modalities = {name: config.modalities[name] for name in tokenizers}  # the two runs only
    assert config.modalities["video"].data.source == "moving_shapes"
    pipe = Pipeline.from_pretrained(train_ar(config))
    assert pipe.modalities == ["image_token", "video"] and pipe.sources["video"] == "moving_shapes"
    image, clip = pipe("a red circle at the top left", modality="image_token")[0], pipe("a red circle moving left",
                                                                                      modality="video")[0]
    assert image.size == (32, 32) and clip.shape == (5, 3, 16, 16)


def test_one_model_makes_images_clips_and_sounds(tmp_path):
    """The joint_all recipe's core at the smallest size: an image, a video and an audio run, one backbone."""
    from trainers.ar import train_ar
    from trainers.recipes import JOINT_ALL_RUNS, tiny_audio_tokenizer, tiny_joint_all, tiny_tokenizer, tiny_video_tokenizer
    from trainers.tokenizer import train_tokenizer

    assert JOINT_ALL_RUNS["audio"] == "next_token" and JOINT_ALL_RUNS["video"] == "next_token"
    tokenizers = {"image_token": str(train_tokenizer(tiny_tokenizer("next_token", str(tmp_path / "image")))),
                  "video": str(train_tokenizer(tiny_video_tokenizer("next_token", str(tmp_path / "video")))),
                  "audio": str(train_tokenizer(tiny_audio_tokenizer(str(tmp_path / "audio"))))}
    config = tiny_joint_all(str(tmp_path / "ar"), {**tokenizers, "image_scale": "", "image_flow": ""})
    config.modalities = {name: config.modalities[name] for name in tokenizers}  # the three runs only
    assert config.modalities["audio"].pattern == "delay" and config.modalities["audio"].data.source == "notes"
    pipe = Pipeline.from_pretrained(train_ar(config))
    assert pipe.modalities == ["image_token", "video", "audio"] and pipe.sources["audio"] == "notes"
    image = pipe("a red circle at the top left", modality="image_token")[0]
    clip = pipe("a red circle moving left", modality="video")[0]
    sound = pipe("a pluck playing E4 four times", modality="audio")[0]
    assert image.size == (32, 32) and clip.shape == (5, 3, 16, 16) and sound.shape == (1, 8000)
    assert sound.abs().max() <= 1 and torch.isfinite(sound).all()
