"""Measure the video figures of the README (each printed as one JSON line, with what it measured).

    python demos/video_figures.py agreement --num 2000        # checker vs the dataset's own captions
    python demos/video_figures.py speed                       # s/clip at batch 1 and 16, KV-cache speed-up
    python demos/video_figures.py tokenizer --tokenizer runs/video/tokenizer_run/tokenizer
    python demos/video_figures.py follow --model runs/video/pipeline --num-prompts 64 --per-prompt 2

Speed uses random weights (speed does not depend on them) with the video quickstart's backbone and
tokenizer configs: a 9-frame 32x32 clip is a (3, 8, 8) grid of 192 tokens after a ~30-byte prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import torch


def agreement(num: int, seed: int) -> dict:
    from mmar.data.moving_shapes import MovingShapesDataset
    from mmar.evaluation.moving_shapes_checker import check_clip

    dataset = MovingShapesDataset(num, size=32, num_frames=9, seed=seed)
    hits = Counter()
    for index in range(num):
        check = check_clip(*dataset[index])
        hits.update(name for name in ("color", "shape", "direction", "all") if getattr(check, name))
    return {"figure": "checker agreement", "clips": num, "seed": seed, **{k: hits[k] / num for k in
                                                                          ("color", "shape", "direction", "all")}}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]


def speed(repeats: int) -> list[dict]:
    from mmar.generate import SamplingConfig, generate
    from mmar.model import MMAR, HeadChoice, MMARConfig
    from mmar.pipeline import modality_spec
    from tokenizers_vq import TOKENIZERS
    from trainers.recipes import VIDEO_FRAMES, _backbone, video_tokenizer

    torch.manual_seed(0)
    config = video_tokenizer("next_token", "unused")
    cls = TOKENIZERS[config.tokenizer]
    tokenizer = cls.from_config_dict(dict(config.tokenizer_config)).eval()
    spec = modality_spec("video", tokenizer, (VIDEO_FRAMES, 3, 32, 32))
    model = MMAR(MMARConfig(_backbone(), [spec], {"text": HeadChoice(), "video": HeadChoice("next_token")})).eval()
    prompt = torch.tensor(list(b"a red circle moving left"))
    rows = []
    guided = SamplingConfig(guidance_scale=3.0, seed=0)
    for batch in (1, 16):
        def clips():
            with torch.no_grad():
                tokenizer.decode(generate(model, [prompt] * batch, "video", guided))  # (batch, 9, 3, 32, 32)
        seconds = _median_seconds(clips, repeats)
        rows.append({"figure": "seconds per clip (CFG 3, KV cache, tokens + decode)", "batch": batch,
                     "tokens_per_clip": spec.num_tokens, "seconds_per_clip": round(seconds / batch, 3)})
    plain = SamplingConfig(guidance_scale=1.0, seed=0)
    cached = _median_seconds(lambda: generate(model, [prompt], "video", plain, use_cache=True), repeats)
    recomputed = _median_seconds(lambda: generate(model, [prompt], "video", plain, use_cache=False), repeats)
    rows.append({"figure": "KV cache vs recompute (batch 1, no CFG)", "tokens": spec.num_tokens,
                 "cached_s": round(cached, 3), "recomputed_s": round(recomputed, 3),
                 "speedup": round(recomputed / cached, 2)})
    return rows


def tokenizer_psnr(directory: str, num: int) -> dict:
    from mmar.data.moving_shapes import MovingShapesDataset
    from mmar.evaluation.reconstruction import reconstruction_metrics
    from tokenizers_vq import load_tokenizer

    dataset = MovingShapesDataset(num, size=32, num_frames=9, seed=10_000)  # a seed no recipe trains on
    clips = torch.stack([dataset[i][0] for i in range(num)])  # (N, 9, 3, 32, 32)
    return {"figure": "tokenizer PSNR per frame position (held-out clips)", "tokenizer": directory,
            **reconstruction_metrics(load_tokenizer(directory), clips)}


def follow(model: str, num_prompts: int, per_prompt: int) -> dict:
    from mmar.evaluation import evaluate
    from mmar.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(model)
    name = pipeline.caption_modality("video")
    scores = evaluate(pipeline, name, num_prompts, per_prompt)
    return {"figure": "prompt-following", "model": model, "head": pipeline.head_of(name), **scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="figure", required=True)
    command = commands.add_parser("agreement")
    command.add_argument("--num", type=int, default=2000)
    command.add_argument("--seed", type=int, default=1)
    command = commands.add_parser("speed")
    command.add_argument("--repeats", type=int, default=3)
    command = commands.add_parser("tokenizer")
    command.add_argument("--tokenizer", required=True)
    command.add_argument("--num", type=int, default=256)
    command = commands.add_parser("follow")
    command.add_argument("--model", required=True)
    command.add_argument("--num-prompts", type=int, default=64)
    command.add_argument("--per-prompt", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.figure == "agreement":
        results = [agreement(args.num, args.seed)]
    elif args.figure == "speed":
        results = speed(args.repeats)
    elif args.figure == "tokenizer":
        results = [tokenizer_psnr(args.tokenizer, args.num)]
    else:
        results = [follow(args.model, args.num_prompts, args.per_prompt)]
    for row in results:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
