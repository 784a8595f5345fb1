"""Text-to-video generation over a (t, h, w) grid: cached equals recomputed (float64), the pipeline
returns clips, the context must hold prompt + clip, and `mmar generate` writes MP4 / GIF / folders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mmar.generate import SamplingConfig, generate
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.pipeline import Pipeline, modality_spec
from mmar.transformer import TransformerConfig
from tokenizers_vq import TOKENIZERS

CLIP = (9, 3, 16, 16)  # frames, channels, side: a (3, 4, 4) token grid
HEAD_BOTTLENECK = {"next_token": "fsq", "flow_matching": "kl"}


def _plays_frames(gif, count: int, fps: float) -> bool:
    """Whether a GIF plays `count` frames at `fps`: Pillow folds identical consecutive frames into one
    longer frame (and GIF times are in centiseconds), so the playing time is what must hold."""
    total = 0
    for index in range(gif.n_frames):
        gif.seek(index)
        total += gif.info["duration"]
    return abs(total - 1000 * count / fps) <= 10 * count


def video_pipeline(head: str, max_len: int = 96, dtype=torch.float32, clip: tuple = CLIP) -> Pipeline:
    torch.manual_seed(0)
    tokenizer = TOKENIZERS["video_vq"](TOKENIZERS["video_vq"].Config(
        base_channels=8, channel_multipliers=(1, 1, 2), bottleneck=HEAD_BOTTLENECK[head], fsq_levels=(4, 4))).eval()
    spec = modality_spec("video", tokenizer, clip)
    grid = tokenizer.token_shape(clip)  # (1 + (F - 1) / 4, 4, 4)
    assert spec.grid == grid and spec.medium == "video" and spec.output_shape == grid
    backbone = TransformerConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_len=max_len)
    model = MMAR(MMARConfig(backbone, [spec], {"text": HeadChoice(), "video": HeadChoice(head)})).to(dtype).eval()
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    return Pipeline(model, {"text": text, "video": tokenizer}, {"video": "moving_shapes"})


@pytest.mark.parametrize("head", ["next_token", "flow_matching"])
def test_cached_equals_recomputed_on_a_video_grid(head):
    guidance = 3.0  # guided: both halves of the doubled batch go through the cache
    model = video_pipeline(head, dtype=torch.float64, clip=(5, 3, 16, 16)).model  # a (2, 4, 4) grid
    prompts = [torch.tensor(list(b"a red circle moving left")), torch.tensor(list(b"up"))]
    options = {"num_steps": 3} if head == "flow_matching" else {}
    runs = [generate(model, prompts, "video", SamplingConfig(guidance_scale=guidance, seed=5, head_options=options),
                     use_cache=cached) for cached in (True, False)]
    expected = (2, 2, 4, 4) if head == "next_token" else (2, 2, 4, 4, model.layout.modalities["video"].latent_channels)
    assert runs[0].shape == expected
    if head == "flow_matching":
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-9)
    else:
        assert torch.equal(runs[0], runs[1])


def test_pipeline_returns_clips_and_checks_the_context():
    pipeline = video_pipeline("next_token", max_len=64)  # 48 grid cells + <bos> <m> </m>: 13 prompt bytes fit
    clips = pipeline(["a red circle", "a blue square"], num_images_per_prompt=2, seed=1)
    assert len(clips) == 4 and all(c.shape == CLIP and c.min() >= -1 and c.max() <= 1 for c in clips)
    with pytest.raises(ValueError, match=r"^the prompt is 24 bytes; this model's context leaves room for 13$"):
        pipeline("a red circle moving left")


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    directory = tmp_path_factory.mktemp("video") / "pipeline"
    video_pipeline("next_token").save_pretrained(directory)
    return directory


def _generate_command(*arguments):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "mmar.cli", "generate", *arguments], capture_output=True, text=True,
                          timeout=300, env=environment)


def test_generate_command_writes_mp4_gif_and_folders(saved_pipeline, tmp_path):
    import av
    from PIL import Image

    common = ["--model", str(saved_pipeline), "--modality", "video", "--prompt", "a red circle moving left"]
    result = _generate_command(*common, "--num", "1", "--fps", "4", "--out", str(tmp_path / "clip.mp4"))
    assert result.returncode == 0, result.stderr
    with av.open(str(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert len(frames) == 9 and (frames[0].width, frames[0].height) == (16, 16) and stream.average_rate == 4
    result = _generate_command(*common, "--num", "3", "--out", str(tmp_path / "grid.gif"))
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "grid.gif") as gif:
        assert _plays_frames(gif, 9, fps=8) and gif.size[0] > 3 * 16  # three clips side by side (captioned)
    result = _generate_command(*common, "--num", "2", "--out", str(tmp_path / "clips"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["000.mp4", "001.mp4"]
    result = _generate_command(*common, "--out", str(tmp_path / "clip.wav"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and ".mp4" in result.stderr


def test_demo_script_writes_mp4_gif_and_folder(saved_pipeline, tmp_path):
    from PIL import Image

    from demos.text_to_video import main

    assert main(["--model", str(saved_pipeline), "--out", str(tmp_path / "demo.mp4"), "--fps", "4"]) == 0
    assert (tmp_path / "demo.mp4").stat().st_size > 0
    assert main(["--model", str(saved_pipeline), "--num", "2", "--out", str(tmp_path / "demo.gif")]) == 0
    with Image.open(tmp_path / "demo.gif") as gif:
        assert _plays_frames(gif, 9, fps=8)
    assert main(["--model", str(saved_pipeline), "--num", "2", "--out", str(tmp_path / "each")]) == 0
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["000.mp4", "001.mp4"]
    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert main(["--model", str(saved_pipeline), "--out", str(tmp_path / "clip.wav")]) == 2
