"""The `mmar` command: one face over training, generation, captioning, evaluation and benchmarks.

Subcommands import what they need inside themselves, so `mmar generate --help` answers at once and
`import mmar` never pulls in the training stack. Bad input is one line on stderr and exit code 2;
an unexpected error is one line and exit code 1 (`-v` shows its traceback). The choices of
`--head`, `--tokenizer` and `--recipe` come from the registries, so a new head is one file and one line.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

EXAMPLES = """examples:
  mmar quickstart                                   # tokenizer + model + report in runs/quickstart
  mmar quickstart --recipe joint --out runs/joint   # three tokenizers, ONE model over all three heads + captions
  mmar quickstart --recipe video --out runs/video   # causal video tokenizer + model on moving-shape clips
  mmar quickstart --recipe audio --out runs/audio   # the RVQ codec + one model on procedural notes (WAV)
  mmar generate --model runs/quickstart/pipeline --prompt "a red circle at the top left" --num 4 --out out.png
  mmar generate --model runs/joint/pipeline --modality image_flow --prompt "a blue square at the center"
  mmar generate --model runs/video/pipeline --prompt "a red circle moving left" --num 1 --fps 8 --out clip.mp4
  mmar caption --model runs/joint/pipeline --image out/000.png
  mmar train-tokenizer --tokenizer image_vq --out runs/vq --set optim.steps=1000
  mmar train --tokenizer runs/vq/tokenizer --head next_token --out runs/ar --set model.num_layers=6
  mmar train --config joint.json --out runs/mix     # a mixture of modality runs (see README)
  mmar eval --model runs/quickstart/pipeline
  mmar demo runs                                    # the Gradio demo over every pipeline under runs/ (127.0.0.1:7860)
  mmar bench
"""


class RegistryChoices:
    """argparse choices read from a registry on first use, so `mmar generate --help` never imports torch."""

    def __init__(self, kind: str) -> None:
        self.kind, self._names = kind, None

    def names(self) -> list[str]:
        if self._names is None:
            if self.kind == "head":
                from heads import HEADS

                self._names = sorted(HEADS)
            else:
                from tokenizers_vq import TOKENIZERS

                self._names = sorted(name for name in TOKENIZERS if name != "text")
        return self._names

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self):
        return iter(self.names())


def _registry_choices(kind: str) -> RegistryChoices:
    return RegistryChoices(kind)


class UsageError(ValueError):
    """Bad input from the command line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (plus where to read more) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2**63), got {value}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _device(text: str) -> str:
    """cpu, cuda or cuda:N, and CUDA only where there is a GPU (torch is imported only for non-cpu names)."""
    if text == "cpu":
        return text
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA GPU (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: mmar runs on cpu or cuda")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mmar", description="Unified multimodal autoregressive generation: tokenizers, one shared "
        "transformer, pluggable heads (next-token, next-scale, flow-matching).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level; show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    heads, tokenizers = _registry_choices("head"), _registry_choices("tokenizer")

    quick = commands.add_parser("quickstart", help="train tokenizer(s) and one model on built-in shapes, then report",
                                description="Train image tokenizer(s) and the AR model on the procedural shapes "
                                "dataset, then write the pipeline, a sample grid, training curves and a "
                                "prompt-following report into --out. --recipe joint trains ONE backbone on "
                                "next_token, next_scale and flow_matching image runs at once, plus captioning; "
                                "--recipe video trains the causal video tokenizer and one head on moving-shape "
                                "clips and writes an animated GIF sample grid (samples.gif) and frame strips; "
                                "--recipe audio the RVQ codec and one model on procedural notes (WAV samples).")
    quick.add_argument("--recipe", default="single", choices=["single", "joint", "video", "joint_video", "joint_all", "audio", "speech"],
                       help="single: one image head (--head); joint: all three heads on one backbone + captions; "
                       "video: the causal video tokenizer + one head (next_token or flow_matching) on moving "
                       "shapes; joint_video: joint plus a next-token video run (one model, images and clips); joint_all: "
                       "joint_video plus a next-token audio run (images, clips and sounds); "
                       "audio: the RVQ codec and one model on procedural notes (WAV samples); speech: the same "
                       "on words spoken by espeak-ng, read back by a spoken-word judge trained once and cached")
    quick.add_argument("--pattern", default="delay", choices=["delay", "flat", "parallel"],
                       help="audio recipe: how the codec's levels are laid out in time (default delay)")
    quick.add_argument("--head", default="next_token", choices=heads, metavar="HEAD",
                       help="the head of the single recipe: %(choices)s (default next_token)")
    quick.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    quick.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field: tokenizer.optim.steps=300 or ar.model.dim=256 (repeatable)")
    quick.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests, CI)")
    quick.add_argument("--num-prompts", type=_positive_int, default=64, help="evaluation prompts (default 64)")
    quick.add_argument("--per-prompt", type=_positive_int, default=None,
                       help="samples per evaluation prompt (default 4; audio 2)")

    tok = commands.add_parser("train-tokenizer", help="train a tokenizer (VQ, multi-scale VQ, KL) on a data source")
    tok.add_argument("--tokenizer", default="image_vq", choices=tokenizers, metavar="NAME",
                     help="registry key: %(choices)s (default image_vq)")
    tok.add_argument("--out", default="runs/tokenizer")
    tok.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a TokenizerTrainConfig field, e.g. optim.steps=1000 data.source=fashion_mnist")
    tok.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")

    train = commands.add_parser("train", help="train the AR model on trained tokenizers' codes (one modality or a mixture)",
                                description="One modality: --tokenizer DIR --head NAME (--set data.source=... is "
                                "that run's). A mixture: --config FILE, a JSON ARTrainConfig whose 'modalities' "
                                "maps a name to {tokenizer, head, data, loss_weight, mix_weight, caption_weight}; "
                                "--set modalities.NAME.data.source=folder reaches into it.")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", help="folder of a trained tokenizer (…/tokenizer): the one-modality shorthand")
    source.add_argument("--config", help="a JSON training config with several modality runs (a mixture)")
    train.add_argument("--head", default="next_token", choices=heads, metavar="HEAD",
                       help="the head of --tokenizer's modality: %(choices)s (default next_token)")
    train.add_argument("--out", default=None, help="run folder (default: the config's out, else runs/ar)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override an ARTrainConfig field, e.g. optim.steps=3000 model.dim=256")
    train.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")

    gen = commands.add_parser("generate", help="generate any modality of a trained pipeline from a prompt",
                              description="Images: a captioned grid when --out ends in .png, otherwise one PNG "
                              "per sample (000.png, 001.png, ...) into the folder --out; video: an H.264 MP4 "
                              "or a GIF when --out ends in .mp4 / .gif (several samples play side by side, "
                              "captioned), at --fps; other media: one file per sample (MP4, WAV, OBJ) into the "
                              "folder --out. Without --modality a "
                              "one-modality pipeline uses its own and a many-modality one lets the text head "
                              "choose. Same seed and settings give identical samples.")
    gen.add_argument("--model", required=True, help="pipeline folder (e.g. runs/quickstart/pipeline)")
    gen.add_argument("--modality", default=None, help="which of the pipeline's modalities to generate")
    gen.add_argument("--prompt", required=True, action="append", help="text prompt (repeatable)")
    gen.add_argument("--num", type=_positive_int, default=4, help="samples per prompt (default 4)")
    gen.add_argument("--seed", type=_seed, default=0)
    add_sampling_arguments(gen)
    gen.add_argument("--steps", type=_positive_int, default=None, help="ODE steps (flow_matching head only)")
    gen.add_argument("--out", default="out.png", help="grid file (*.png for images, *.mp4 / *.gif for video, "
                     "several clips side by side), one file of the medium (a.wav; several samples become a-000.wav, "
                     "...), or a folder for one file per sample")
    gen.add_argument("--fps", type=_finite_float, default=8.0, help="frame rate of video files (default 8)")
    gen.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    gen.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="compile each decode step as a whole (default: on CUDA only; on CPU the first use "
                          "compiles for tens of seconds, needs a C++ compiler, and pays off for many samples)")

    caption = commands.add_parser("caption", help="describe images with a trained pipeline's text head",
                                  description="Prints one caption per image (greedy by default; --temperature > 0 "
                                  "samples, --num captions per image).")
    caption.add_argument("--model", required=True, help="pipeline folder")
    caption.add_argument("--image", required=True, nargs="+", help="image file(s) to describe")
    caption.add_argument("--modality", default=None, help="which image tokenizer reads them (default: the first)")
    caption.add_argument("--num", type=_positive_int, default=1, help="captions per image (default 1)")
    caption.add_argument("--temperature", type=_finite_float, default=0.0, help="0 is greedy (default)")
    caption.add_argument("--top-k", type=_nonnegative_int, default=0)
    caption.add_argument("--top-p", type=_finite_float, default=1.0)
    caption.add_argument("--seed", type=_seed, default=0)
    caption.add_argument("--max-bytes", type=_positive_int, default=64, help="longest caption (default 64 bytes)")
    caption.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    evaluate = commands.add_parser("eval", help="prompt-following, caption accuracy and Fréchet distance of a pipeline",
                                   description="Procedural sources are scored by their analytic checkers. Images "
                                   "from any other source (Fashion-MNIST, your folder) are scored by a feature net "
                                   "mmar fits on the held-out split the model never trained on (class-following "
                                   "when the captions are a small closed set, Fréchet distance, precision and "
                                   "recall); the report says how well the net itself does on held-out images.")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--modality", default=None, help="evaluate this modality only (default: every one)")
    evaluate.add_argument("--captions", action="store_true", help="also score captions of held-out items")
    evaluate.add_argument("--seed", type=_seed, default=0)
    evaluate.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    evaluate.add_argument("--num-prompts", type=_positive_int, default=64)
    evaluate.add_argument("--per-prompt", type=_positive_int, default=4)
    evaluate.add_argument("--cfg", type=_finite_float, nargs="+", default=None, metavar="S",
                          help="guidance scale(s); several values sweep them (default: the pipeline's tuned setting)")
    evaluate.add_argument("--plausibility", type=_finite_float, default=None,
                          help="guidance plausibility constraint (default: the pipeline's tuned setting)")
    evaluate.add_argument("--data", default=None, metavar="DIR",
                          help="score against the held-out split of this folder instead of the training data's")
    evaluate.add_argument("--cache", default=None, metavar="DIR",
                          help="where the feature net is cached (default: tuning/feature_net beside the pipeline)")
    evaluate.add_argument("--steps", type=_positive_int, nargs="+", default=None, metavar="N",
                          help="ODE steps (flow_matching head only); several values sweep them, e.g. --steps 1 2 4 8 16")
    evaluate.add_argument("--out", default=None, help="write the report JSON here")
    evaluate.add_argument("--plot", default=None, help="with several --steps: write accuracy vs steps as a PNG here")

    demo = commands.add_parser("demo", help="the Gradio demo over every pipeline in a folder (this machine only by default)",
                               description="A page with a model picker over every pipeline found in DIR, one tab "
                               "per modality (plus captions), served on 127.0.0.1 unless --host says otherwise. "
                               "Results go to --out, the only folder the server reads files from.")
    add_demo_arguments(demo)

    bench = commands.add_parser("bench", help="measure generation and training speed (tokens/s, images/s)")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    bench.add_argument("--device", type=_device, default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--out", default=None, help="also write the figures as JSON here")
    bench.add_argument("--compile", action="store_true", default=None,
                       help="also time each head's decode step compiled as a whole, interleaved with eager, with its warm-up "
                            "and the share of the loop outside it (always on CUDA; tens of seconds of compiling per "
                            "head on CPU)")
    return parser


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--cfg, --cfg-schedule, --temperature, --top-k, --top-p, --plausibility; each not given is the pipeline's
    stored default."""
    stored = " (default: the pipeline's tuned setting, see `sampling` in its pipeline.json; else {})"
    parser.add_argument("--cfg", type=_finite_float, default=None,
                        help="classifier-free guidance scale; 1 disables" + stored.format(3))
    parser.add_argument("--cfg-schedule", default=None, choices=["constant", "linear"],
                        help="guidance constant or growing over positions" + stored.format("constant"))
    parser.add_argument("--temperature", type=_finite_float, default=None, help="0 is greedy" + stored.format(1))
    parser.add_argument("--top-k", type=_nonnegative_int, default=None, help="0 keeps all codes" + stored.format(0))
    parser.add_argument("--top-p", type=_finite_float, default=None, help="nucleus mass" + stored.format(1))
    parser.add_argument("--plausibility", type=_finite_float, default=None,
                        help="with guidance, draw only codes with at least this fraction of the top code's "
                        "probability under the prompt" + stored.format(0))


def sampling_options(args) -> dict:
    """The sampling settings given on the command line (the pipeline's defaults fill the others)."""
    given = {"guidance_scale": args.cfg, "guidance_schedule": args.cfg_schedule, "temperature": args.temperature,
             "top_k": args.top_k, "top_p": args.top_p, "plausibility": args.plausibility}
    return {key: value for key, value in given.items() if value is not None}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, shared by `mmar demo` and `python demos/app.py`; None = demos.app.DemoConfig's default."""
    parser.add_argument("root", nargs="?", default=None, metavar="DIR",
                        help="a pipeline folder or a folder of runs (default: runs)")
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860)")
    parser.add_argument("--out", default=None, help="where results are written, the only folder served (default runs/demo)")
    parser.add_argument("--queue-size", type=int, default=None, help="requests that may wait at once (default 16)")
    parser.add_argument("--max-file-size", default=None, help="largest upload, e.g. 5mb (default)")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads, ever
    if threading.current_thread() is not threading.main_thread():  # signals can only be caught there
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _terminated)  # a `kill` ends a run like Ctrl-C: cleanly, with a message
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        return COMMANDS[args.command](args) or 0
    except (UsageError, ValueError, FileNotFoundError, FloatingPointError) as error:
        if args.verbose:
            traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"mmar {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:  # the disk, not the input: a full or read-only filesystem, a path that cannot be
        if args.verbose:
            traceback.print_exc()
        print(f"mmar {args.command}: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        signal_name = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"mmar: {signal_name}; checkpoints already written are intact (resume with --resume)", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    except Exception as error:  # a bug, not bad input: one line, and the traceback with -v
        if args.verbose:
            traceback.print_exc()
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"mmar {args.command}: unexpected {type(error).__name__}: {first} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so `finally` blocks and atomic writes clean up as for Ctrl-C."""


def _terminated(signum, frame) -> None:
    raise Terminated()


ADVICE = {errno.ENOSPC: "the disk is full: free some space, then run again (with --resume for training)",
          errno.EDQUOT: "the disk quota is exceeded: free some space, then run again",
          errno.EROFS: "the filesystem is read-only: choose a writable --out",
          errno.EACCES: "permission denied: choose a folder you can write to",
          errno.EPERM: "permission denied: choose a folder you can write to",
          errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
          errno.EISDIR: "this is a folder: give a file name, or another path",
          errno.EEXIST: "this already exists and is in the way: choose another path",
          errno.ENAMETOOLONG: "the path is too long"}


def os_error_line(error: OSError) -> str:
    """One line: the path, what the system said, and what to do."""
    path = f"{error.filename}: " if error.filename else ""
    what = error.strerror or str(error)
    advice = ADVICE.get(error.errno)
    return f"{path}{what}" + (f" ({advice})" if advice and error.errno else "")


def _quickstart(args) -> int:
    from mmar.lock import folder_lock
    from trainers.quickstart import run_quickstart

    out = Path(args.out)
    per_prompt = args.per_prompt or (2 if args.recipe in ("audio", "speech") else 4)
    with folder_lock(out):  # its tokenizer and model runs lock their own subfolders too
        report = run_quickstart(args.head, out, args.overrides, tiny=args.tiny, num_prompts=args.num_prompts,
                                per_prompt=per_prompt, recipe=args.recipe, pattern=args.pattern)
    if args.recipe in ("audio", "speech"):
        score, codec = report["prompt_following"], report["tokenizer"]
        print(f"\nmmar quickstart ({args.recipe}, {report['pattern']} pattern) finished in "
              f"{report['seconds']['total']:.0f} s")
        if "word" in score:
            judge = score["judge_accuracy"]
            print(f"  prompt-following audio (next_token): word {score['word']:.0%} by the spoken-word judge"
                  + (f" ({judge:.0%} right on held-out espeak-ng voices)" if judge is not None else ""))
        else:
            print(f"  prompt-following audio (next_token): pitch {score['pitch']:.0%}  rhythm {score['rhythm']:.0%}  "
                  f"both {score['all']:.0%}")
        print(f"  codec: SI-SNR {codec['si_snr']:.1f} dB  mel distance {codec['mel_distance']:.3f}  "
              f"{codec['bitrate']:.0f} bit/s  ({report['transformer_calls_per_second_of_audio']:g} transformer "
              "calls per second of audio)")
        for name in ("pipeline", "samples", "samples.png", "curves.png", "report.md", "report.json"):
            print(f"  {name:<12} {out / name}")
        prompt = "a pluck playing E4 four times" if args.recipe == "audio" else "stop"
        print(f'\ngenerate more:\n  mmar generate --model {out / "pipeline"} --modality audio --prompt '
              f'"{prompt}" --num 1 --out a.wav')
        return 0
    title = {"single": args.head, "video": f"video, {args.head}"}.get(
        args.recipe, f"{args.recipe}: " + ", ".join(report["heads"].values()))
    print(f"\nmmar quickstart ({title}) finished in {report['seconds']['total']:.0f} s")
    one = not args.recipe.startswith("joint")
    scores = {next(iter(report["heads"])): report["prompt_following"]} if one else report["prompt_following"]
    for name, score in scores.items():
        print(f"  prompt-following {name} ({report['heads'][name]}): {_attributes(score)}")
    if "captions" in report:
        print(f"  captions: {_attributes(report['captions'])}")
    print(f"  tokenizer: {report['tokenizer']}")
    samples = {"video": ("samples.gif", "samples"), "joint_video": ("samples.png", "samples.gif", "samples"),
               "joint_all": ("samples.png", "samples.gif", "samples_audio.png", "samples")}.get(
        args.recipe, ("samples.png",))
    for name in ("pipeline", *samples, "curves.png", "report.md", "report.json"):
        print(f"  {name:<12} {out / name}")
    if args.recipe == "video":
        print(f'\ngenerate more:\n  mmar generate --model {out / "pipeline"} --prompt "a red circle moving left" '
              f'--num 4 --seed 0 --fps 8 --out clips.gif')
        return 0
    modality = "" if args.recipe == "single" else f" --modality {next(iter(report['heads']))}"
    print(f'\ngenerate more:\n  mmar generate --model {out / "pipeline"}{modality} --prompt "a red circle at the top '
          f'left" --num 4 --seed 0 --out out.png')
    return 0


def _attributes(score: dict) -> str:
    """"color 90%  shape 80%  position 70%  all three 60%" for whichever attributes a checker reports."""
    names = [name for name in score if isinstance(score[name], float) and name not in ("all", "parsed")]
    return "  ".join(f"{name} {score[name]:.0%}" for name in names) + \
        f"  all three {score['all']:.0%}"


def _train_tokenizer(args) -> int:
    from mmar.config import apply_overrides
    from trainers.tokenizer import TokenizerTrainConfig, train_tokenizer

    from mmar.data import PROCEDURAL_SOURCES
    from tokenizers_vq import TOKENIZERS
    from trainers.common import DataConfig

    # The tokenizer's medium's built-in procedural source is the default (`--set data.source=...` picks another).
    data = DataConfig(source=PROCEDURAL_SOURCES.get(TOKENIZERS[args.tokenizer].modality, DataConfig.source))
    config = apply_overrides(TokenizerTrainConfig(out=args.out, tokenizer=args.tokenizer, data=data), args.overrides)
    given = {override.split("=", 1)[0].strip() for override in args.overrides}
    if TOKENIZERS[args.tokenizer].modality == "video" and "image_steps" not in given:
        config.image_steps = config.optim.steps // 2  # clips alone stall at the mean blob (README, Video)
        print(f"video tokenizer: the first {config.image_steps} of {config.optim.steps} steps train on single "
              "frames; --set image_steps=0 to train on whole clips only")
    print(f"tokenizer written to {train_tokenizer(config, resume=args.resume)}")
    return 0


def _train(args) -> int:
    import dataclasses

    from mmar.config import apply_overrides, load_json
    from trainers.ar import ARTrainConfig, single_run, train_ar

    if args.config:
        config, overrides = load_json(ARTrainConfig, args.config), args.overrides
    else:
        config, overrides = single_run(args.out or "runs/ar", args.tokenizer, args.head, args.overrides)
    if args.out:
        config = dataclasses.replace(config, out=args.out)
    config = apply_overrides(config, overrides)
    if not args.config:  # the shorthand sizes itself to its data (trainers/sizing.py); a config file is as written
        from trainers.sizing import fit_to_data, training_items

        run = next(iter(config.modalities.values()))
        for change in fit_to_data(config, training_items(run.data), {o.split("=", 1)[0].strip() for o in overrides}):
            print(f"sized to the data: {change}; --set the key to choose yourself")
    print(f"pipeline written to {train_ar(config, resume=args.resume)}")
    return 0


def _steps_option(steps: int | None) -> dict:
    """`--steps N` as the flow head's sampling option (nothing when not given)."""
    return {} if steps is None else {"num_steps": steps}


def _check_steps(pipeline, modality: str | None, steps) -> None:
    """`--steps` is the flow head's option: on another head it is an error, never silently ignored."""
    if steps is None:
        return
    names = [modality] if modality else pipeline.modalities
    others = sorted({pipeline.head_of(m) for m in names} - {"flow_matching"})
    if others:
        raise UsageError(f"--steps sets the ODE steps of a flow_matching head; {'/'.join(names)} uses {', '.join(others)}")


#: a decode step slower than this (seconds) after the first was compiling (another graph of the step)
WARMUP_STALL_S = 2.0


def _warmup_reporter():
    """A progress callback that makes the compiled warm-ups visible: the prompt's prefill (before
    step 0 is reported done: `done` 0) and the first compiled decode call (after step 1: a next-token
    step, or every next-scale scale after the first at once) compile on first use, so it says so
    before them and how long they took after; a later step that stalls for seconds compiled another
    graph: a longer cache span (`Sequence.span`) or a call of several steps (`decode.STEPS_PER_CALL`)."""
    started, last = {}, {}

    def report(modality: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 0:
            print(f"{modality}: compiling the prompt's prefill and the decode step on first use (warm-up) ...",
                  file=sys.stderr, flush=True)
            started[modality] = now
        elif modality in started and (done > 1 or done == total):  # step 1 is drawn from the prefill
            rest = f"; drawing {total - done} more steps" if done < total else ""
            print(f"{modality}: warm-up done in {now - started.pop(modality):.1f} s{rest}", file=sys.stderr,
                  flush=True)
        elif done > 2 and now - last.get(modality, now) > WARMUP_STALL_S:
            print(f"{modality}: step {done} of {total} compiled another graph of the step (a longer cache span, "
                  f"or several steps a call) in {now - last[modality]:.1f} s", file=sys.stderr, flush=True)
        last[modality] = now

    return report


def _generate(args) -> int:
    if args.temperature is not None and args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if not args.fps > 0:
        raise UsageError(f"--fps must be positive, got {args.fps}")
    from mmar.images import captioned_grid, save_atomic
    from mmar.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(args.model, device=args.device)
    _check_steps(pipeline, args.modality, args.steps)
    if args.modality:  # the medium is known: a wrong --out fails before any sampling
        _check_out(Path(args.out), {pipeline.spec(args.modality).medium})
    compiling = args.compile if args.compile is not None else pipeline.device.type == "cuda"
    if compiling and pipeline.device.type == "cpu":
        from mmar.bench import has_cxx_compiler

        if not has_cxx_compiler():
            raise UsageError("--compile on CPU needs a C++ compiler for torch.compile (inductor): install one "
                             "(e.g. apt install g++) or set $CXX, or leave --compile out")
    outputs = pipeline(args.prompt, num_images_per_prompt=args.num, modality=args.modality, seed=args.seed,
                       compile_step=args.compile, progress=_warmup_reporter() if compiling else None,
                       **sampling_options(args), **_steps_option(args.steps))
    chosen = pipeline.last_modalities
    captions = [p for p in args.prompt for _ in range(args.num)]
    if len(set(chosen)) > 1 or (args.modality is None and len(pipeline.modalities) > 1):
        captions = [f"{m}: {c}" for m, c in zip(chosen, captions)]
    media = {pipeline.spec(m).medium for m in chosen}
    out = Path(args.out)
    if out.suffix.lower() == ".png" and media == {"image"}:
        save_atomic(captioned_grid(outputs, captions, columns=min(8, len(outputs))), out)
        print(f"wrote a grid of {len(outputs)} images to {out}")
        return 0
    from mmar.media import default_name, save_media, video_grid

    if out.suffix.lower() in (".mp4", ".gif") and media == {"video"}:
        clip = outputs[0] if len(outputs) == 1 else video_grid(outputs, captions, columns=min(8, len(outputs)))
        save_media("video", clip, out, fps=args.fps)
        print(f"wrote {len(outputs)} clip{'s side by side' if len(outputs) > 1 else ''} to {out}")
        return 0
    if out.suffix:
        _check_out(out, media)
        medium = next(iter(media))
        # one sample: that file; several: NAME-000.wav, NAME-001.wav, ... beside it
        paths = [out] if len(outputs) == 1 else [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(len(outputs))]
        for item, modality, path in zip(outputs, chosen, paths):
            save_media(medium, item, path, **pipeline.save_options(modality))
        print(f"wrote {len(outputs)} {medium} sample{'s' * (len(outputs) > 1)}: {', '.join(str(p) for p in paths)}")
        return 0
    for i, (item, modality) in enumerate(zip(outputs, chosen)):
        medium = pipeline.spec(modality).medium
        if medium == "image":
            save_atomic(item, out / f"{i:03d}.png")
        else:
            options = {"fps": args.fps} if medium == "video" else pipeline.save_options(modality)
            save_media(medium, item, out / default_name(medium, i), **options)
    print(f"wrote {len(outputs)} samples to {out}/")
    return 0


def _check_out(out: Path, media: set[str]) -> None:
    """--out must be a folder, a .png grid of images, or a file of the one medium generated."""
    from mmar.media import FILE_SUFFIXES

    if not out.suffix or (out.suffix.lower() == ".png" and media == {"image"}):
        return
    medium = next(iter(media))
    if len(media) > 1 or medium == "image" or out.suffix.lower() not in FILE_SUFFIXES.get(medium, ()):
        accepted = "; ".join(m + " " + " ".join(FILE_SUFFIXES[m]) for m in sorted(media) if m in FILE_SUFFIXES)
        raise UsageError(f"--out {out}: a .png grid holds images only and a file holds one medium ({accepted}); "
                         "or give a folder for one file per sample")


def _caption(args) -> int:
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    from PIL import UnidentifiedImageError

    from mmar.images import open_image
    from mmar.pipeline import Pipeline

    images = []
    for name in args.image:
        try:
            images.append(open_image(name))
        except FileNotFoundError:
            raise FileNotFoundError(f"no image at {name}") from None
        except (UnidentifiedImageError, OSError) as error:
            raise UsageError(f"{name} is not a readable image ({error})") from None
    pipeline = Pipeline.from_pretrained(args.model, device=args.device)
    for k in range(args.num):
        texts = pipeline.caption(images, modality=args.modality, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, seed=args.seed + k, max_new_tokens=args.max_bytes)
        for name, text in zip(args.image, texts):
            # one line per caption: a sampled newline or control byte is printed escaped
            shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
            print(f"{name}\t{shown}")
    return 0


def _eval(args) -> int:
    import json

    import itertools

    from mmar.evaluation import checker_of, evaluate, evaluate_captions, report_markdown
    from mmar.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(args.model, device=args.device)
    modalities = [pipeline.spec(args.modality).name] if args.modality else pipeline.modalities
    steps_sweep, cfg_sweep = args.steps or [None], args.cfg or [None]
    _check_steps(pipeline, args.modality, args.steps)
    if len(steps_sweep) > 1 and len(cfg_sweep) > 1:
        raise UsageError("sweep one setting at a time: several --steps or several --cfg values, not both")
    if len(steps_sweep) > 1 and len(modalities) > 1:
        raise UsageError("--steps sweeps one flow_matching modality: pass --modality too")
    if args.plot and len(steps_sweep) < 2:
        raise UsageError("--plot draws accuracy against several --steps values: pass at least two")
    cache = Path(args.cache) if args.cache else Path(args.model).resolve().parent / "tuning" / "feature_net"
    data = {"source": "folder", "path": args.data} if args.data else None
    results: dict = {}
    for modality in modalities:
        head = pipeline.head_of(modality)
        checker = checker_of(pipeline, modality, cache, data)
        for steps, cfg in itertools.product(steps_sweep, cfg_sweep):
            sampling = {**_steps_option(steps), **({} if cfg is None else {"guidance_scale": cfg}),
                        **({} if args.plausibility is None else {"plausibility": args.plausibility})}
            scores = evaluate(pipeline, modality, args.num_prompts, args.per_prompt, seed=args.seed, checker=checker,
                              **sampling)
            used = cfg if cfg is not None else pipeline.sampling_defaults(modality)["guidance_scale"]
            title = (f"prompt-following of {args.model}: {modality} ({head}, CFG {used:g}"
                     + ("" if cfg is not None else " stored") + (f", {steps} steps)" if steps else ")"))
            print(report_markdown(scores, title) + "\n")
            results.setdefault(modality, {})[steps if len(steps_sweep) > 1 else cfg] = scores
    sweep_key = "by_steps" if len(steps_sweep) > 1 else "by_cfg"
    report: dict = {m: next(iter(r.values())) if len(r) == 1 else {sweep_key: {str(k): v for k, v in r.items()}}
                    for m, r in results.items()}
    if args.captions:
        report["captions"] = evaluate_captions(pipeline, args.modality, args.num_prompts, args.per_prompt, seed=args.seed)
        print(report_markdown(report["captions"], f"caption accuracy of {args.model}") + "\n")
    if args.plot:
        from trainers.plots import plot_accuracy_vs_steps

        only = modalities[0]
        used = cfg_sweep[0] if cfg_sweep[0] is not None else pipeline.sampling_defaults(only)["guidance_scale"]
        plot_accuracy_vs_steps(results[only], Path(args.plot), title=f"{pipeline.head_of(only)}, CFG {used:g}")
        print(f"wrote {args.plot}")
    if args.out:
        single = len(modalities) == 1 and not args.captions
        Path(args.out).write_text(json.dumps(report[modalities[0]] if single else report, indent=2) + "\n")
    return 0


def _demo(args) -> int:
    from demos.app import build_app, config_from, launch  # gradio is imported here, never by `import mmar`

    config = config_from(args)
    launch(build_app(config), config)
    return 0


def _bench(args) -> int:
    from mmar.bench import run_bench

    run_bench(quick=args.quick, device=args.device, out=args.out, compile_step=args.compile)
    return 0


COMMANDS = {"quickstart": _quickstart, "train-tokenizer": _train_tokenizer, "train": _train,
            "generate": _generate, "caption": _caption, "eval": _eval, "demo": _demo, "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
