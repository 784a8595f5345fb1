"""The quickstart: tokenizer(s) -> ONE AR model -> samples, curves and an analytic report, in one run.

Recipe "single": one image tokenizer and one head (`--head`). Recipe "joint": the three image
tokenizers and one backbone trained on all three heads at once, with captioning mixed in; the
report then has prompt-following per head and caption accuracy. Recipe "audio": the RVQ codec on
procedural notes and one backbone over its levels (`pattern` delay or flat); WAV samples and a
captioned spectrogram sheet, prompt-following by the notes checker (pitch, rhythm); recipe "speech" the same on
espeak-ng words, prompt-following by the spoken-word judge (`mmar.evaluation.speech_judge`). Recipe "joint_video": the joint
recipe plus a next-token video run, so ONE model makes images and clips; "joint_all" adds a next-token
audio run on the notes too: images, clips and sounds from ONE model. Recipe "video": the causal video
tokenizer and one head (`--head next_token` or `flow_matching`) on moving-shape clips; the sample
sheet is an animated GIF grid with captions (`samples.gif`) plus a PNG strip of every sample's
frames (`samples/000.png`, ...), and the report adds the tokenizer's PSNR per frame position on
held-out 9-frame clips.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from mmar.config import apply_overrides
from mmar.evaluation import evaluate, evaluate_captions, report_markdown
from mmar.images import captioned_grid, save_atomic
from mmar.pipeline import Pipeline
from trainers.ar import train_ar
from trainers.plots import plot_curves
from trainers.recipes import (HEAD_TOKENIZER, JOINT_ALL_RUNS, JOINT_RUNS, JOINT_VIDEO_RUNS, RECIPES, audio_ar,
                              audio_tokenizer, joint_all_ar, joint_ar, joint_video_ar, quickstart_ar,
                              quickstart_tokenizer, tiny_ar, tiny_audio_ar, tiny_audio_tokenizer, tiny_joint,
                              tiny_joint_all, tiny_joint_video, tiny_tokenizer, tiny_video_ar, tiny_video_tokenizer,
                              video_ar, video_tokenizer)
from trainers.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

GRID_PROMPTS = [f"a {c} {s} at the {p}" for c, s, p in [
    ("red", "circle", "top left"), ("green", "square", "top right"), ("blue", "triangle", "bottom left"),
    ("yellow", "circle", "bottom right"), ("magenta", "square", "center"), ("cyan", "triangle", "top left"),
    ("white", "circle", "top right"), ("orange", "square", "bottom left"), ("red", "triangle", "center"),
    ("green", "circle", "bottom right"), ("blue", "square", "top left"), ("yellow", "triangle", "top right"),
    ("magenta", "circle", "bottom left"), ("cyan", "square", "bottom right"), ("white", "triangle", "center"),
    ("orange", "circle", "top left"),
]]
#: the video recipe's sample sheet: every colour, shape and direction
VIDEO_PROMPTS = [f"a {c} {s} moving {d}" for c, s, d in [
    ("red", "circle", "left"), ("green", "square", "right"), ("blue", "triangle", "up"), ("yellow", "circle", "down"),
    ("magenta", "square", "left"), ("cyan", "triangle", "right"), ("white", "circle", "up"),
    ("orange", "square", "down"), ("red", "triangle", "right"), ("green", "circle", "up"),
    ("blue", "square", "down"), ("yellow", "triangle", "left"), ("magenta", "circle", "right"),
    ("cyan", "square", "up"), ("white", "triangle", "down"), ("orange", "circle", "left"),
]]


#: what a report calls the items of each medium
ITEMS = {"image": "images", "video": "clips", "audio": "clips"}

AUDIO_PROMPTS = [f"a {t} playing {n} {r}" for t, n, r in [
    ("sine", "C4", "once"), ("square", "E4", "four times"), ("sawtooth", "G4", "rising"), ("pluck", "A4", "once"),
    ("sine", "D4", "four times"), ("square", "F4", "rising"), ("sawtooth", "B4", "once"), ("pluck", "C4", "four times"),
    ("sine", "E4", "rising"), ("square", "G4", "once"), ("sawtooth", "A4", "four times"), ("pluck", "B4", "rising"),
    ("sine", "F4", "once"), ("square", "D4", "four times"), ("sawtooth", "C4", "rising"), ("pluck", "E4", "four times"),
]]


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    tokenizer = [o.removeprefix("tokenizer.") for o in overrides if o.startswith("tokenizer.")]
    ar = [o.removeprefix("ar.") for o in overrides if o.startswith("ar.")]
    unknown = [o for o in overrides if not o.startswith(("tokenizer.", "ar."))]
    if unknown:
        raise ValueError(f"quickstart overrides start with 'tokenizer.' or 'ar.', got {unknown}")
    return tokenizer, ar


def run_quickstart(head: str = "next_token", out: str | Path = "runs/quickstart", overrides: list[str] = (),
                   tiny: bool = False, num_prompts: int = 64, per_prompt: int = 4, guidance_scale: float | None = None,
                   recipe: str = "single", pattern: str = "delay") -> dict:
    """Train the tokenizer(s) and the AR model of `recipe`, then sample and evaluate. Returns the report."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if recipe in ("audio", "speech"):
        return run_audio_quickstart(out, overrides, tiny=tiny, num_prompts=num_prompts, per_prompt=per_prompt,
                                    guidance_scale=guidance_scale, pattern=pattern,
                                    source="notes" if recipe == "audio" else "speech")
    out = Path(out)
    started = time.perf_counter()
    tokenizer_overrides, ar_overrides = _split_overrides(list(overrides))
    heads = {"single": {"image": head}, "video": {"video": head}, "joint": dict(JOINT_RUNS),
             "joint_video": dict(JOINT_VIDEO_RUNS), "joint_all": dict(JOINT_ALL_RUNS)}[recipe]
    joint = recipe.startswith("joint")
    tokenizer_configs = {}
    for name, run_head in heads.items():
        run_dir = str(out / (f"tokenizer_{name}" if joint else "tokenizer_run"))
        if name == "video":
            config = (tiny_video_tokenizer if tiny else video_tokenizer)(run_head, run_dir)
        elif name == "audio":
            config = (tiny_audio_tokenizer if tiny else audio_tokenizer)(run_dir)
        else:
            config = (tiny_tokenizer if tiny else quickstart_tokenizer)(run_head, run_dir)
        tokenizer_configs[name] = apply_overrides(config, tokenizer_overrides)
    # The model's config (and its overrides) is checked before any tokenizer trains: a bad
    # `ar.` override fails in a second, not after minutes of tokenizer training. It names the
    # folders `train_tokenizer` will write.
    tokenizer_dirs = {name: str(Path(config.out) / "tokenizer") for name, config in tokenizer_configs.items()}
    if recipe == "single":
        ar_config = (tiny_ar if tiny else quickstart_ar)(head, str(out / "ar_run"), tokenizer_dirs["image"])
    elif recipe == "video":
        ar_config = (tiny_video_ar if tiny else video_ar)(head, str(out / "ar_run"), tokenizer_dirs["video"])
    elif recipe == "joint":
        ar_config = (tiny_joint if tiny else joint_ar)(str(out / "ar_run"), tokenizer_dirs)
    elif recipe == "joint_video":
        ar_config = (tiny_joint_video if tiny else joint_video_ar)(str(out / "ar_run"), tokenizer_dirs)
    else:
        ar_config = (tiny_joint_all if tiny else joint_all_ar)(str(out / "ar_run"), tokenizer_dirs)
    ar_config = apply_overrides(ar_config, ar_overrides)
    tokenizer_reports, curves = {}, {}
    for name, config in tokenizer_configs.items():
        train_tokenizer(config)  # writes tokenizer_dirs[name]
        tokenizer_reports[name] = json.loads((Path(config.out) / "report.json").read_text())
        curves[f"tokenizer ({config.tokenizer})"] = Path(config.out) / "metrics.jsonl"
    tokenizer_seconds = time.perf_counter() - started
    if "video" in heads:  # the tokenizer trained on shorter clips: report it on the model's own clip length
        tokenizer_reports["video"] = clip_reconstruction(tokenizer_dirs["video"], ar_config.modalities["video"].data)
        run_dir = out / ("tokenizer_video" if joint else "tokenizer_run")
        (run_dir / "report_clips.json").write_text(json.dumps(tokenizer_reports["video"], indent=2) + "\n")
    pipeline_dir = train_ar(ar_config)
    ar_seconds = time.perf_counter() - started - tokenizer_seconds
    curves[f"AR ({'+'.join(heads.values())})"] = out / "ar_run" / "metrics.jsonl"

    final = out / "pipeline"
    pipeline = Pipeline.from_pretrained(pipeline_dir)
    pipeline.save_pretrained(final)
    images = [name for name in pipeline.modalities if pipeline.spec(name).medium == "image"]
    if images:
        prompts = GRID_PROMPTS[:4] if tiny else GRID_PROMPTS
        pictures, captions = [], []
        for name in images:
            pictures += pipeline(prompts, modality=name, guidance_scale=guidance_scale, seed=0)
            captions += [f"{pipeline.head_of(name)}: {p}" if joint else p for p in prompts]
        save_atomic(captioned_grid(pictures, captions, columns=8), out / "samples.png")
    if "video" in pipeline.modalities:
        write_video_samples(pipeline, VIDEO_PROMPTS[:4] if tiny else VIDEO_PROMPTS, out, guidance_scale)
    if "audio" in pipeline.modalities:
        write_audio_samples(pipeline, AUDIO_PROMPTS[:4] if tiny else AUDIO_PROMPTS, out, guidance_scale,
                            sheet="samples_audio.png")
    plot_curves(curves, out / "curves.png")
    scores = {name: evaluate(pipeline, name, num_prompts, per_prompt, guidance_scale=guidance_scale)
              for name in pipeline.modalities}
    first = next(iter(heads))
    report = {
        "recipe": recipe,
        "heads": {name: pipeline.head_of(name) for name in pipeline.modalities},
        "prompt_following": scores if joint else scores[first],
        "tokenizer": tokenizer_reports if joint else tokenizer_reports[first],
        "sampling": sampling_report(pipeline, guidance_scale),
    }
    title = {"single": f"mmar quickstart ({head})", "video": f"mmar quickstart (video, {head})",
             "joint": "mmar quickstart (joint)", "joint_video": "mmar quickstart (joint, with video)",
             "joint_all": "mmar quickstart (joint, with video and audio)"}[recipe]
    markdown = "\n".join(report_markdown(s, f"{title}: {name} ({pipeline.head_of(name)})",
                                         ITEMS[pipeline.spec(name).medium]) for name, s in scores.items())
    if joint:
        report["captions"] = evaluate_captions(pipeline, num_items=num_prompts, per_item=per_prompt)
        markdown += "\n" + report_markdown(report["captions"], f"{title}: caption accuracy "
                                           f"({pipeline.caption_modality()}, first caption greedy, then sampled)")
    report["seconds"] = {"tokenizer": round(tokenizer_seconds, 1), "ar": round(ar_seconds, 1),
                         "total": round(time.perf_counter() - started, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown += (f"\n\nTokenizer: {report['tokenizer']}\n\nWall time: {report['seconds']} seconds "
                 f"(set-up excluded)\n")
    (out / "report.md").write_text(markdown)
    return report


def sampling_report(pipeline: Pipeline, guidance_scale: float | None) -> dict:
    """What the samples and the report used: the given guidance scale, else each modality's stored defaults."""
    chosen = {"guidance_scale": guidance_scale} if guidance_scale is not None else {}
    return {"seed": 0, **{name: {**pipeline.sampling_defaults(name), **chosen} for name in pipeline.modalities}}


def run_audio_quickstart(out: str | Path = "runs/quickstart_audio", overrides: list[str] = (), tiny: bool = False,
                         num_prompts: int = 64, per_prompt: int = 2, guidance_scale: float | None = None,
                         pattern: str = "delay", source: str = "notes") -> dict:
    """Codec -> AR model over its levels (`pattern`) -> WAV samples, spectrogram sheet, curves, report.

    `source` "notes": prompt-following by the notes checker; "speech" (espeak-ng words): by the
    spoken-word judge (`mmar.evaluation.speech_judge`), trained once and cached on first use; `tiny`
    trains a seconds-long judge into out/speech_judge instead (its verdicts are rough)."""
    from mmar.data.speech import WORDS
    from mmar.evaluation.checkers import SpeechChecker, checker_for
    from mmar.evaluation.speech_judge import TINY_TRAINING

    out = Path(out)
    started = time.perf_counter()
    tokenizer_overrides, ar_overrides = _split_overrides(list(overrides))
    codec_config = apply_overrides((tiny_audio_tokenizer if tiny else audio_tokenizer)(str(out / "tokenizer_run"), source),
                                   tokenizer_overrides)
    tokenizer_dir = str(Path(codec_config.out) / "tokenizer")  # what `train_tokenizer` writes
    # checked before the codec trains, as in `run_quickstart`
    ar_config = apply_overrides((tiny_audio_ar if tiny else audio_ar)(str(out / "ar_run"), tokenizer_dir, pattern, source),
                                ar_overrides)
    train_tokenizer(codec_config)
    tokenizer_report = json.loads((out / "tokenizer_run" / "report.json").read_text())
    tokenizer_seconds = time.perf_counter() - started
    pipeline_dir = train_ar(ar_config)
    ar_seconds = time.perf_counter() - started - tokenizer_seconds
    plot_curves({"tokenizer (audio_codec)": out / "tokenizer_run" / "metrics.jsonl",
                 f"AR (next_token, {ar_config.modalities['audio'].pattern})": out / "ar_run" / "metrics.jsonl"},
                out / "curves.png")

    final = out / "pipeline"
    pipeline = Pipeline.from_pretrained(pipeline_dir)
    pipeline.save_pretrained(final)
    prompts = list(AUDIO_PROMPTS if source == "notes" else WORDS)[:4 if tiny else None]
    write_audio_samples(pipeline, prompts, out, guidance_scale)
    sampling_started = time.perf_counter()
    checker = SpeechChecker(training=TINY_TRAINING, cache_dir=out / "speech_judge") if tiny and source == "speech" \
        else checker_for(source)
    scores = evaluate(pipeline, "audio", num_prompts, per_prompt, guidance_scale=guidance_scale, checker=checker)
    evaluation_seconds = time.perf_counter() - sampling_started
    spec = pipeline.spec("audio")
    seconds_of_audio = spec.data_shape[-1] / pipeline.tokenizers["audio"].config.sample_rate
    report = {
        "recipe": "audio" if source == "notes" else "speech",
        "heads": {"audio": pipeline.head_of("audio")},
        "pattern": spec.pattern,
        "prompt_following": scores,
        "tokenizer": tokenizer_report,
        "transformer_calls_per_second_of_audio": round(spec.num_tokens / seconds_of_audio, 1),
        "sampling": {**sampling_report(pipeline, guidance_scale), "evaluation_seconds": round(evaluation_seconds, 1)},
        "seconds": {"tokenizer": round(tokenizer_seconds, 1), "ar": round(ar_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    levels = ", ".join(f"{q} level{'s' * (q != '1')}: SI-SNR {v['si_snr']:.1f} dB, mel {v['mel_distance']:.3f}, "
                       f"{v['bitrate']:.0f} bit/s" for q, v in tokenizer_report.get("levels", {}).items())
    markdown = report_markdown(scores, f"mmar quickstart ({report['recipe']}, {spec.pattern} pattern): prompt following",
                               "clips")
    markdown += (f"\nCodec (held-out clips): {levels}\n\nTransformer calls per second of audio: "
                 f"{report['transformer_calls_per_second_of_audio']}\n\nWall time: {report['seconds']} seconds "
                 f"(set-up excluded)\n")
    (out / "report.md").write_text(markdown)
    return report


def clip_reconstruction(tokenizer_dir: str, data, num_clips: int = 128) -> dict:
    """The video tokenizer's report (PSNR overall and per frame position) on held-out clips shaped like `data`."""
    import dataclasses

    import torch

    from mmar.data import make_source
    from mmar.evaluation.reconstruction import reconstruction_metrics
    from tokenizers_vq import load_tokenizer

    held_out = make_source(**{**dataclasses.asdict(data), "num_items": num_clips, "seed": 10_000})  # unseen seed
    clips = torch.stack([held_out[i][0] for i in range(len(held_out))])  # (N, F, 3, H, W)
    return reconstruction_metrics(load_tokenizer(tokenizer_dir), clips)


def write_audio_samples(pipeline: Pipeline, prompts: list[str], out: Path, guidance_scale: float | None,
                        sheet: str = "samples.png") -> None:
    """One WAV per prompt under out/samples/ and a captioned spectrogram sheet (`sheet`)."""
    from mmar.media import save_media, to_preview

    clips = pipeline(prompts, modality="audio", guidance_scale=guidance_scale, seed=0)
    for i, (clip, prompt) in enumerate(zip(clips, prompts)):
        save_media("audio", clip, out / "samples" / f"{i:03d}-{prompt.replace(' ', '_')}.wav",
                   **pipeline.save_options("audio"))
    save_atomic(captioned_grid([to_preview("audio", clip) for clip in clips], prompts, columns=4, cell=192),
                out / sheet)


def write_video_samples(pipeline: Pipeline, prompts: list[str], out: Path, guidance_scale: float | None) -> None:
    """`samples.gif`: the prompts' clips playing side by side, captioned; `samples/NNN.png`: each one's frames."""
    from mmar.media import preview_video, save_media, video_grid

    clips = pipeline(prompts, modality="video", guidance_scale=guidance_scale, seed=0)
    save_media("video", video_grid(clips, prompts, columns=8), out / "samples.gif", fps=4)
    for index, clip in enumerate(clips):
        save_atomic(preview_video(clip, num_frames=len(clip)), out / "samples" / f"{index:03d}.png")
