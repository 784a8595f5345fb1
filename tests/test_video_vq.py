"""The causal video tokenizer: causality in time, an image as a one-frame clip, the token grid."""

from __future__ import annotations

import pytest
import torch

from mmar.data.moving_shapes import MovingShapesDataset
from mmar.data.shapes import ShapesDataset
from mmar.evaluation.reconstruction import psnr
from tokenizers_vq.video_vq import VideoVQ, VideoVQConfig

TINY = {"base_channels": 8, "channel_multipliers": (1, 1, 2)}


def tiny(bottleneck: str) -> VideoVQ:
    torch.manual_seed(0)
    return VideoVQ(VideoVQConfig(bottleneck=bottleneck, **TINY)).eval()


def clips(count: int = 2, frames: int = 9) -> torch.Tensor:
    dataset = MovingShapesDataset(count, size=32, num_frames=frames, seed=3)
    return torch.stack([dataset[i][0] for i in range(count)])  # (B, F, 3, 32, 32)


@pytest.mark.parametrize("bottleneck", ["fsq", "vq", "kl"])
def test_changing_frame_k_never_changes_earlier_tokens(bottleneck):
    tokenizer = tiny(bottleneck)
    original = clips()  # (2, 9, 3, 32, 32)
    with torch.no_grad():
        base = tokenizer.encode(original)  # (2, 3, 8, 8) or (2, 3, 8, 8, C)
        for k in (1, 4, 5, 8):  # the first and last frame of each later token frame
            changed = original.clone()
            changed[:, k] = torch.rand_like(changed[:, k]) * 2 - 1
            tokens = tokenizer.encode(changed)
            earlier = (k - 1) // 4 + 1  # token frames 0..earlier-1 cover only frames < k (frame 0, then 4 per token)
            assert torch.equal(tokens[:, :earlier], base[:, :earlier]), f"frame {k} changed earlier tokens"
            assert not torch.equal(tokens[:, earlier], base[:, earlier]), f"frame {k} changed nothing"
            # The decoder is causal too: frames before k decode the same from the changed tokens' prefix.
            decoded, again = tokenizer.decode(base), tokenizer.decode(tokens)
            first_changed = 1 + 4 * (earlier - 1)
            assert torch.equal(decoded[:, :first_changed], again[:, :first_changed])


@pytest.mark.parametrize("bottleneck", ["fsq", "kl"])
def test_image_is_a_one_frame_clip(bottleneck):
    tokenizer = tiny(bottleneck)  # untrained: the equalities are structural
    dataset = ShapesDataset(4, size=32, seed=1)
    images = torch.stack([dataset[i][0] for i in range(4)])  # (4, 3, 32, 32)
    with torch.no_grad():
        one_frame = tokenizer.encode(images[:, None])  # (4, 1, 8, 8[, C])
        decoded = tokenizer.decode(one_frame)  # (4, 1, 3, 32, 32)
        assert decoded.shape == (4, 1, 3, 32, 32)
        # The same images as the first frame of 5-frame clips (then black frames): same tokens, same decode.
        padded = torch.cat([images[:, None], torch.full((4, 4, 3, 32, 32), -1.0)], dim=1)  # (4, 5, 3, 32, 32)
        in_clip = tokenizer.encode(padded)
        assert torch.equal(in_clip[:, :1], one_frame)
        first = tokenizer.decode(in_clip)[:, 0]  # (4, 3, 32, 32)
    alone, within = psnr(images, decoded[:, 0]), psnr(images, first)
    assert abs(alone - within) < 1.0, (alone, within)
    assert torch.equal(decoded[:, 0], first)  # in fact identical: nothing before frame 0 to differ


def test_token_grid_and_bad_shapes():
    tokenizer = tiny("fsq")
    assert tokenizer.token_shape((9, 3, 32, 32)) == (3, 8, 8)
    assert tokenizer.token_shape((17, 3, 32, 32)) == (5, 8, 8)
    assert tokenizer.token_shape((1, 3, 32, 32)) == (1, 8, 8)
    for shape in [(8, 3, 32, 32), (9, 3, 30, 32), (9, 1, 32, 32), (3, 32, 32)]:
        with pytest.raises(ValueError, match="cannot tokenize clips"):
            tokenizer.token_shape(shape)
    with pytest.raises(ValueError, match=r"expected float clips \(B, F, 3, H, W\)"):
        tokenizer.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="codes must lie in"):
        tokenizer.decode(torch.full((1, 1, 8, 8), tokenizer.codebook_size))
    with pytest.raises(ValueError, match="bottleneck must be one of"):
        VideoVQConfig(bottleneck="lfq")


def test_kl_calibration_sets_unit_scale():
    tokenizer = tiny("kl")
    data = clips(4, 5)
    tokenizer.calibrate(data)
    with torch.no_grad():
        latents = tokenizer.encode(data)  # (4, 2, 8, 8, C)
    assert latents.shape[-1] == tokenizer.latent_channels and abs(float(latents.std()) - 1.0) < 0.05


def test_image_steps_train_on_single_frames_and_are_checked():
    from mmar.config import validate
    from trainers.common import DataConfig, OptimConfig
    from trainers.tokenizer import TokenizerTrainConfig, one_frame_each

    data = clips(4, 5)  # (4, 5, 3, 32, 32)
    frames = one_frame_each(data, torch.Generator().manual_seed(0))  # (4, 1, 3, 32, 32)
    again = one_frame_each(data, torch.Generator().manual_seed(0))
    assert frames.shape == (4, 1, 3, 32, 32) and torch.equal(frames, again)
    assert all(any(torch.equal(frames[i, 0], data[i, f]) for f in range(5)) for i in range(4))
    video = DataConfig(source="moving_shapes", size=32, num_frames=5, num_items=16)
    validate(TokenizerTrainConfig(tokenizer="video_vq", data=video, optim=OptimConfig(steps=4), image_steps=2))
    with pytest.raises(ValueError, match="must leave some of optim.steps"):
        validate(TokenizerTrainConfig(tokenizer="video_vq", data=video, optim=OptimConfig(steps=4), image_steps=4))
    with pytest.raises(ValueError, match="is not one"):
        validate(TokenizerTrainConfig(tokenizer="image_vq", data=DataConfig(num_items=16), image_steps=2))


def test_folded_layout_keeps_every_frame_of_a_group():
    """TimeToChannel reads each frame of a group: the tokens change when any one of them does (no averaging)."""
    tokenizer = tiny("kl")
    original = clips(1, 5)  # (1, 5, 3, 32, 32)
    with torch.no_grad():
        base = tokenizer.encode(original)  # (1, 2, 8, 8, C)
        swapped = original.clone()
        swapped[:, [2, 3]] = original[:, [3, 2]]  # same frames, other order: a mean of the group cannot tell
        assert not torch.allclose(tokenizer.encode(swapped)[:, 1], base[:, 1])


def test_train_tokenizer_command_starts_a_video_tokenizer_on_frames(tmp_path, capsys):
    import json

    from mmar.cli import main

    out = tmp_path / "video"
    settings = ["optim.steps=4", "optim.batch_size=4", "image_batch_size=4", "data.size=16", "data.num_frames=5",
                "data.num_items=24", "data.validation=4", "run.progress=false", "run.checkpoint_every=4",
                "tokenizer_config.base_channels=8", "tokenizer_config.channel_multipliers=[1, 1, 2]"]
    assert main(["train-tokenizer", "--tokenizer", "video_vq", "--out", str(out),
                 *[item for setting in settings for item in ("--set", setting)]]) == 0
    assert "the first 2 of 4 steps train on single frames" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["image_steps"] == 2
    assert (out / "tokenizer" / "model.safetensors").is_file()
