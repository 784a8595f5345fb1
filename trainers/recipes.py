"""Recipes: named, tested starting configs (plain functions returning dataclasses).

The quickstart recipes are sized for a 2-core CPU, on the procedural shapes at 32x32 with an 8x8
latent grid: measured, a tokenizer in 1.5-2.5 minutes and the AR model in 4 (next_token), 7
(next_scale) or 9 (flow_matching) minutes. The joint recipe trains the three image tokenizers and
ONE backbone over all three heads at once, with captioning mixed in. The video recipe trains the
causal video tokenizer and one head on moving-shape clips: 9 frames of 32x32, a (3, 8, 8) grid of
192 tokens per clip (the tokenizer first trains on single frames, then on clips). The audio recipe trains the RVQ codec on
procedural notes (1 s clips) and the backbone on its 4 levels in the delay (default) or flat pattern.
The joint_video and joint_all recipes add a video run, and a video and an audio run, to the joint one.
"""

from __future__ import annotations

from mmar.transformer import TransformerConfig
from trainers.ar import ARTrainConfig, ModalityRun
from trainers.tune import TuneConfig
from trainers.common import DataConfig, OptimConfig, RunConfig
from trainers.tokenizer import TokenizerTrainConfig

#: which tokenizer each image head trains on
HEAD_TOKENIZER = {"next_token": "image_vq", "next_scale": "multiscale_vq", "flow_matching": "image_kl"}
#: the joint recipe's modality runs: name -> head (each with its tokenizer from HEAD_TOKENIZER)
JOINT_RUNS = {"image_token": "next_token", "image_scale": "next_scale", "image_flow": "flow_matching"}
#: the joint run that also learns to caption (the other two only generate)
JOINT_CAPTIONER = "image_token"
#: the joint recipe with video: the image runs plus a next-token video run ("video" trains the video tokenizer)
JOINT_VIDEO_RUNS = {**JOINT_RUNS, "video": "next_token"}
#: every modality at once: the joint_video runs plus a next-token audio run ("audio" trains the codec)
JOINT_ALL_RUNS = {**JOINT_VIDEO_RUNS, "audio": "next_token"}
RECIPES = ("single", "joint", "video", "joint_video", "joint_all", "audio", "speech")
#: the video tokenizer's bottleneck for each head it serves
VIDEO_BOTTLENECK = {"next_token": "fsq", "flow_matching": "kl"}
#: the video recipe's clips: frames per clip, for the tokenizer and the model
VIDEO_FRAMES = 9
#: the audio recipe's clips: procedural notes, 1 s at 16 kHz (50 codec frames of 4 levels)
AUDIO_SECONDS = 1.0


def quickstart_tokenizer(head: str, out: str) -> TokenizerTrainConfig:
    if head not in HEAD_TOKENIZER:
        raise ValueError(f"unknown head {head!r}; known: {sorted(HEAD_TOKENIZER)}")
    return TokenizerTrainConfig(
        out=out,
        tokenizer=HEAD_TOKENIZER[head],
        data=DataConfig(source="shapes", size=32, num_items=20_000, seed=0),
        optim=OptimConfig(steps=500, batch_size=64, learning_rate=2e-3, warmup_steps=20, weight_decay=0.0,
                          beta2=0.99, ema_beta=0.99),
        run=RunConfig(log_every=10, sample_every=0, checkpoint_every=250),
    )


def _backbone() -> TransformerConfig:
    return TransformerConfig(dim=192, num_layers=4, num_heads=6, num_kv_heads=2, max_len=256)


def quickstart_ar(head: str, out: str, tokenizer: str) -> ARTrainConfig:
    run = ModalityRun(tokenizer=tokenizer, data=DataConfig(source="shapes", size=32, num_items=20_000, seed=0), head=head)
    return ARTrainConfig(
        out=out,
        modalities={"image": run},
        model=_backbone(),
        optim=OptimConfig(steps=700, batch_size=32, learning_rate=2e-3, warmup_steps=50, ema_beta=0.995),
        run=RunConfig(log_every=10, sample_every=500, checkpoint_every=500),
    )


def joint_ar(out: str, tokenizers: dict[str, str]) -> ARTrainConfig:
    """ONE backbone over next_token, next_scale and flow_matching image runs, plus captioning.

    `tokenizers`: run name (JOINT_RUNS) -> trained tokenizer folder. The same backbone and batch as
    each one-head quickstart; 1,500 steps in all (~500 steps' worth of samples per head).
    """
    runs = {name: ModalityRun(tokenizer=tokenizers[name], head=head,
                              data=DataConfig(source="shapes", size=32, num_items=20_000, seed=0),
                              caption_weight=0.25 if name == JOINT_CAPTIONER else 0.0)
            for name, head in JOINT_RUNS.items()}
    return ARTrainConfig(
        out=out,
        modalities=runs,
        model=_backbone(),
        optim=OptimConfig(steps=1500, batch_size=32, learning_rate=2e-3, warmup_steps=50, ema_beta=0.995),
        run=RunConfig(log_every=10, sample_every=750, checkpoint_every=500),
    )


def video_tokenizer(head: str, out: str) -> TokenizerTrainConfig:
    """The causal video tokenizer (FSQ codes for next_token, KL latents for flow_matching) on moving shapes.

    The first 400 steps train on single frames, 64 a step (an image is a one-frame clip), the last
    400 on whole 9-frame clips: measured on 5-frame clips, 300 frame steps then 100 clip steps reach
    19.6 dB (FSQ) where 450 clip steps alone stall at 16.3 dB, the mean blob.
    """
    if head not in VIDEO_BOTTLENECK:
        raise ValueError(f"the video recipe has heads {sorted(VIDEO_BOTTLENECK)}, not {head!r}")
    return TokenizerTrainConfig(
        out=out,
        tokenizer="video_vq",
        tokenizer_config={"bottleneck": VIDEO_BOTTLENECK[head], "fsq_levels": (8, 5, 5, 5)},
        data=DataConfig(source="moving_shapes", size=32, num_frames=VIDEO_FRAMES, num_items=8_000, seed=0,
                        validation=128),
        optim=OptimConfig(steps=800, batch_size=16, learning_rate=2e-3, warmup_steps=20, weight_decay=0.0,
                          beta2=0.99, ema_beta=0.99),
        run=RunConfig(log_every=10, sample_every=0, checkpoint_every=400),
        image_steps=400,
    )


def video_ar(head: str, out: str, tokenizer: str) -> ARTrainConfig:
    data = DataConfig(source="moving_shapes", size=32, num_frames=VIDEO_FRAMES, num_items=4_000, seed=0)
    return ARTrainConfig(
        out=out,
        modalities={"video": ModalityRun(tokenizer=tokenizer, data=data, head=head)},
        model=_backbone(),  # max_len 256 holds <bos>, a 30-byte prompt, <m>, 192 tokens and </m>
        optim=OptimConfig(steps=500, batch_size=32, learning_rate=2e-3, warmup_steps=50, ema_beta=0.995),
        run=RunConfig(log_every=10, sample_every=0, checkpoint_every=250),
    )


def tiny_video_tokenizer(head: str, out: str) -> TokenizerTrainConfig:
    config = video_tokenizer(head, out)
    config.tokenizer_config.update(base_channels=8, channel_multipliers=(1, 1, 2))
    config.data = DataConfig(source="moving_shapes", size=16, num_frames=5, num_items=64)
    config.optim = OptimConfig(steps=2, batch_size=8, warmup_steps=1)
    config.run = RunConfig(log_every=1, sample_every=0, checkpoint_every=2, progress=False)
    config.data.validation = 8
    config.image_steps, config.image_batch_size = 1, 8
    return config


def tiny_video_ar(head: str, out: str, tokenizer: str) -> ARTrainConfig:
    config = _tiny(video_ar(head, out, tokenizer))
    config.modalities["video"].data = DataConfig(source="moving_shapes", size=16, num_frames=5, num_items=64)
    config.modalities["video"].sample_prompts = ("a red circle moving left", "a green square moving up")
    return config


def joint_video_ar(out: str, tokenizers: dict[str, str]) -> ARTrainConfig:
    """The joint recipe plus a next-token video run on moving shapes: one backbone makes images and clips.

    Four runs share the draws, so 2,000 steps give each about as many samples as the joint recipe's
    1,500 steps give each of its three."""
    config = joint_ar(out, tokenizers)
    config.modalities["video"] = video_ar("next_token", out, tokenizers["video"]).modalities["video"]
    config.optim.steps = 2000
    return config


def tiny_joint_video(out: str, tokenizers: dict[str, str]) -> ARTrainConfig:
    config = _tiny(joint_video_ar(out, tokenizers))
    config.modalities["video"].data = DataConfig(source="moving_shapes", size=16, num_frames=5, num_items=64)
    config.modalities["video"].sample_prompts = ("a red circle moving left", "a green square moving up")
    return config


def tiny_tokenizer(head: str, out: str) -> TokenizerTrainConfig:
    """Seconds-long config for tests and smoke runs."""
    config = quickstart_tokenizer(head, out)
    config.data = DataConfig(num_items=256)
    config.optim = OptimConfig(steps=4, batch_size=16, warmup_steps=1)
    config.run = RunConfig(log_every=2, sample_every=0, checkpoint_every=2, progress=False)
    config.data.validation = 32
    return config


def joint_all_ar(out: str, tokenizers: dict[str, str]) -> ARTrainConfig:
    """joint_video plus a next-token audio run on procedural notes (delay pattern): ONE backbone makes
    images with three heads, clips and sounds. Five runs share the draws: 2,500 steps."""
    config = joint_video_ar(out, tokenizers)
    config.modalities["audio"] = audio_ar(out, tokenizers["audio"]).modalities["audio"]
    config.optim.steps = 2500
    return config


def tiny_joint_all(out: str, tokenizers: dict[str, str]) -> ARTrainConfig:
    config = tiny_joint_video(out, tokenizers)
    config.modalities["audio"] = tiny_audio_ar(out, tokenizers["audio"]).modalities["audio"]
    return config


def _tiny(config: ARTrainConfig) -> ARTrainConfig:
    for run in config.modalities.values():
        run.data = DataConfig(num_items=256)
        run.sample_prompts = ("a red circle at the top left", "a green square at the bottom right")
    config.model = TransformerConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_len=256)
    config.optim = OptimConfig(steps=4, batch_size=8, warmup_steps=1)
    config.run = RunConfig(log_every=2, sample_every=0, checkpoint_every=2, progress=False)
    config.tune = TuneConfig(guidance=(1.0, 3.0), num_prompts=2, per_prompt=1)
    return config


def tiny_ar(head: str, out: str, tokenizer: str) -> ARTrainConfig:
    return _tiny(quickstart_ar(head, out, tokenizer))


def tiny_joint(out: str, tokenizers: dict[str, str]) -> ARTrainConfig:
    return _tiny(joint_ar(out, tokenizers))


def _audio_data(num_items: int, source: str = "notes") -> DataConfig:
    return DataConfig(source=source, num_items=num_items, seed=0, seconds=AUDIO_SECONDS, validation=128)


def audio_tokenizer(out: str, source: str = "notes") -> TokenizerTrainConfig:
    """The RVQ codec (tokenizers_vq/audio_codec.py defaults: 50 frames/s x 4 levels of 256 codes) on
    `source`: "notes" (the audio recipe) or "speech" (espeak-ng words, the speech recipe).

    800 steps: on 128 held-out notes clips, 400 steps gave SI-SNR 0.5 / 1.3 / 1.8 dB at 1 / 2 / 4 levels and
    the checker read the pitch of 89% of the reconstructions; 800 steps 3.7 / 4.8 / 5.4 dB and 100%."""
    return TokenizerTrainConfig(
        out=out,
        tokenizer="audio_codec",
        data=_audio_data(4_000, source),
        optim=OptimConfig(steps=800, batch_size=8, learning_rate=2e-3, warmup_steps=20, weight_decay=0.0,
                          beta2=0.99, ema_beta=0.99),
        run=RunConfig(log_every=10, sample_every=0, checkpoint_every=400),
    )


def audio_ar(out: str, tokenizer: str, pattern: str = "delay", source: str = "notes") -> ARTrainConfig:
    """The backbone over the codec's 4 levels: delay (53 steps a clip) or flat (200 steps a clip)."""
    run = ModalityRun(tokenizer=tokenizer, data=_audio_data(4_000, source), head="next_token", pattern=pattern)
    return ARTrainConfig(
        out=out,
        modalities={"audio": run},
        model=_backbone(),
        optim=OptimConfig(steps=600, batch_size=32, learning_rate=2e-3, warmup_steps=50, ema_beta=0.995),
        run=RunConfig(log_every=10, sample_every=0, checkpoint_every=300),
    )


def tiny_audio_tokenizer(out: str, source: str = "notes") -> TokenizerTrainConfig:
    config = audio_tokenizer(out, source)
    config.tokenizer_config = {"base_channels": 4, "max_channels": 8, "dilations": [1], "latent_dim": 8,
                               "codebook_size": 16}
    config.data = DataConfig(source=source, num_items=48, seed=0, seconds=0.5)
    config.optim = OptimConfig(steps=4, batch_size=8, warmup_steps=1)
    config.run = RunConfig(log_every=2, sample_every=0, checkpoint_every=2, progress=False)
    config.data.validation = 8
    return config


def tiny_audio_ar(out: str, tokenizer: str, pattern: str = "delay", source: str = "notes") -> ARTrainConfig:
    config = _tiny(audio_ar(out, tokenizer, pattern, source))
    config.modalities["audio"].data = DataConfig(source=source, num_items=48, seed=0, seconds=0.5)
    config.modalities["audio"].sample_prompts = ()  # the source's own captions
    if source == "speech":  # the sweep would train the full spoken-word judge (minutes): keep the defaults
        config.tune.enabled = False
    return config
