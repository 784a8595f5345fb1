"""The `mmar` command: one face over training, generation, evaluation and benchmarks.

Subcommands import what they need inside themselves, so `mmar generate --help` answers at once and
`import mmar` never pulls in the training stack. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  mmar quickstart                                   # tokenizer + model + report in runs/quickstart
  mmar generate --model runs/quickstart/pipeline --prompt "a red circle at the top left" --num 4 --out out.png
  mmar train-tokenizer --tokenizer image_vq --out runs/vq --set optim.steps=1000
  mmar train --tokenizer runs/vq/tokenizer --head next_token --out runs/ar --set model.num_layers=6
  mmar eval --model runs/quickstart/pipeline
  mmar bench
"""


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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mmar", description="Unified multimodal autoregressive generation: tokenizers, one shared "
        "transformer, pluggable heads (next-token, next-scale, flow-matching).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quick = commands.add_parser("quickstart", help="train a tokenizer and a model on built-in shapes, then report",
                                description="Train an image tokenizer and the AR model on the procedural shapes "
                                "dataset, then write the pipeline, a sample grid, training curves and a "
                                "prompt-following report into --out.")
    quick.add_argument("--head", default="next_token", choices=["next_token", "next_scale", "flow_matching"])
    quick.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    quick.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field: tokenizer.optim.steps=300 or ar.model.dim=256 (repeatable)")
    quick.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests, CI)")
    quick.add_argument("--num-prompts", type=_positive_int, default=64, help="evaluation prompts (default 64)")
    quick.add_argument("--per-prompt", type=_positive_int, default=4, help="samples per evaluation prompt (default 4)")

    tok = commands.add_parser("train-tokenizer", help="train a tokenizer (VQ, multi-scale VQ, KL) on a data source")
    tok.add_argument("--tokenizer", default="image_vq", help="registry key: image_vq | multiscale_vq | image_kl")
    tok.add_argument("--out", default="runs/tokenizer")
    tok.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a TokenizerTrainConfig field, e.g. optim.steps=1000 data.source=fashion_mnist")
    tok.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")

    train = commands.add_parser("train", help="train the AR model on a trained tokenizer's codes")
    train.add_argument("--tokenizer", required=True, help="folder of a trained tokenizer (…/tokenizer)")
    train.add_argument("--head", default="next_token", choices=["next_token", "next_scale", "flow_matching"])
    train.add_argument("--out", default="runs/ar")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override an ARTrainConfig field, e.g. optim.steps=3000 model.dim=256")
    train.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")

    gen = commands.add_parser("generate", help="generate images from a prompt with a trained pipeline",
                              description="Writes a captioned grid when --out ends in .png, otherwise one PNG "
                              "per sample (000.png, 001.png, ...) into the folder --out. Same seed and "
                              "settings give identical images.")
    gen.add_argument("--model", required=True, help="pipeline folder (e.g. runs/quickstart/pipeline)")
    gen.add_argument("--prompt", required=True, action="append", help="text prompt (repeatable)")
    gen.add_argument("--num", type=int, default=4, help="samples per prompt (default 4)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale; 1 disables (default 3)")
    gen.add_argument("--cfg-schedule", default="constant", choices=["constant", "linear"])
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0 keeps all codes")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--steps", type=_positive_int, default=None, help="ODE steps (flow_matching head only)")
    gen.add_argument("--out", default="out.png", help="grid file (*.png) or a folder for one file per sample")
    gen.add_argument("--device", default="cpu")

    evaluate = commands.add_parser("eval", help="prompt-following accuracy of a pipeline (analytic shape checker)")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--num-prompts", type=_positive_int, default=64)
    evaluate.add_argument("--per-prompt", type=_positive_int, default=4)
    evaluate.add_argument("--cfg", type=float, default=3.0)
    evaluate.add_argument("--steps", type=_positive_int, nargs="+", default=None, metavar="N",
                          help="ODE steps (flow_matching head only); several values sweep them, e.g. --steps 1 2 4 8 16")
    evaluate.add_argument("--out", default=None, help="write the report JSON here")
    evaluate.add_argument("--plot", default=None, help="with several --steps: write accuracy vs steps as a PNG here")

    bench = commands.add_parser("bench", help="measure generation and training speed (tokens/s, images/s)")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--out", default=None, help="also write the figures as JSON here")
    bench.add_argument("--compile", action="store_true", default=None,
                       help="also time the torch.compile'd decode step (always on CUDA; ~30 s of compiling per row on CPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads, ever
    try:
        return COMMANDS[args.command](args) or 0
    except (UsageError, ValueError, FileNotFoundError, FloatingPointError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"mmar {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmar: interrupted; checkpoints already written are intact (resume with --resume)", file=sys.stderr)
        return 130


def _quickstart(args) -> int:
    from trainers.quickstart import run_quickstart

    out = Path(args.out)
    report = run_quickstart(args.head, out, args.overrides, tiny=args.tiny, num_prompts=args.num_prompts,
                            per_prompt=args.per_prompt)
    scores = report["prompt_following"]
    print(f"\nmmar quickstart ({args.head}) finished in {report['seconds']['total']:.0f} s")
    print(f"  prompt-following: color {scores['color']:.0%}  shape {scores['shape']:.0%}  "
          f"position {scores['position']:.0%}  all three {scores['all']:.0%}")
    print(f"  tokenizer: {report['tokenizer']}")
    for name in ("pipeline", "samples.png", "curves.png", "report.md", "report.json"):
        print(f"  {name:<12} {out / name}")
    print(f'\ngenerate more:\n  mmar generate --model {out / "pipeline"} --prompt "a red circle at the top left" '
          f"--num 4 --seed 0 --cfg 3 --out out.png")
    return 0


def _train_tokenizer(args) -> int:
    from mmar.config import apply_overrides
    from trainers.tokenizer import TokenizerTrainConfig, train_tokenizer

    config = apply_overrides(TokenizerTrainConfig(out=args.out, tokenizer=args.tokenizer), args.overrides)
    print(f"tokenizer written to {train_tokenizer(config, resume=args.resume)}")
    return 0


def _train(args) -> int:
    from mmar.config import apply_overrides
    from trainers.ar import ARTrainConfig, train_ar

    config = apply_overrides(ARTrainConfig(out=args.out, tokenizer=args.tokenizer, head=args.head), args.overrides)
    print(f"pipeline written to {train_ar(config, resume=args.resume)}")
    return 0


def _steps_option(steps: int | None) -> dict:
    """`--steps N` as the flow head's sampling option (nothing when not given)."""
    return {} if steps is None else {"num_steps": steps}


def _generate(args) -> int:
    if args.num < 1:
        raise UsageError(f"--num must be at least 1, got {args.num}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    from mmar.images import captioned_grid, save_atomic
    from mmar.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(args.model, device=args.device)
    images = pipeline(args.prompt, num_images_per_prompt=args.num, guidance_scale=args.cfg,
                      guidance_schedule=args.cfg_schedule, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, **_steps_option(args.steps))
    captions = [p for p in args.prompt for _ in range(args.num)]
    out = Path(args.out)
    if out.suffix.lower() == ".png":
        save_atomic(captioned_grid(images, captions, columns=min(8, len(images))), out)
        print(f"wrote a grid of {len(images)} images to {out}")
    else:
        for i, image in enumerate(images):
            save_atomic(image, out / f"{i:03d}.png")
        print(f"wrote {len(images)} images to {out}/")
    return 0


def _eval(args) -> int:
    import json

    from mmar.evaluation.prompt_following import report_markdown
    from mmar.pipeline import Pipeline
    from trainers.quickstart import evaluate

    pipeline = Pipeline.from_pretrained(args.model)
    sweep = args.steps or [None]
    if len(sweep) > 1 and pipeline.head != "flow_matching":
        raise UsageError(f"--steps sweeps ODE steps of a flow_matching pipeline; {args.model} uses {pipeline.head}")
    if args.plot and len(sweep) < 2:
        raise UsageError("--plot draws accuracy against several --steps values: pass at least two")
    results = {}
    for steps in sweep:
        scores = evaluate(pipeline, args.num_prompts, args.per_prompt, guidance_scale=args.cfg, **_steps_option(steps))
        title = f"prompt-following of {args.model} ({pipeline.head}" + (f", {steps} steps)" if steps else ")")
        print(report_markdown(scores, title) + "\n")
        results[steps] = scores
    if args.plot:
        from trainers.plots import plot_accuracy_vs_steps

        plot_accuracy_vs_steps(results, Path(args.plot), title=f"{pipeline.head}, CFG {args.cfg:g}")
        print(f"wrote {args.plot}")
    if args.out:
        report = results[sweep[0]] if len(sweep) == 1 else {"by_steps": {str(k): v for k, v in results.items()}}
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _bench(args) -> int:
    from mmar.bench import run_bench

    run_bench(quick=args.quick, device=args.device, out=args.out, compile_step=args.compile)
    return 0


COMMANDS = {"quickstart": _quickstart, "train-tokenizer": _train_tokenizer, "train": _train,
            "generate": _generate, "eval": _eval, "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
