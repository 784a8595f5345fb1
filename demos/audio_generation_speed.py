"""Transformer calls and generation speed per second of audio, for each codebook pattern (random weights).

    python demos/audio_generation_speed.py --batches 1 16 --repeats 2

The backbone is the audio quickstart's (dim 192, 4 layers); the clip is 1 s of the codec's grid
(50 frames x 4 levels of 256 codes). Weights do not change the cost, so no training is needed.
Real-time factor = wall seconds / seconds of audio made (below 1: faster than real time); the
codec's decoder is not included. Guidance (CFG 3) doubles the rows, as in the quickstart.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmar.generate import SamplingConfig, generate
from mmar.layout import ModalitySpec
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.transformer import TransformerConfig


def measure(pattern: str, batch: int, use_cache: bool, repeats: int, frames: int, levels: int) -> dict:
    spec = ModalitySpec("audio", 256, levels, 0, (frames, 1, 1), pattern=pattern, token_shape=(frames, 1, 1),
                        data_shape=(1, frames * 320), medium="audio")
    backbone = TransformerConfig(dim=192, num_layers=4, num_heads=6, num_kv_heads=2, max_len=256)
    torch.manual_seed(0)
    model = MMAR(MMARConfig(backbone, [spec], {"text": HeadChoice(), "audio": HeadChoice("next_token")})).eval()
    prompts = [torch.tensor(list(b"a pluck playing E4 four times"))] * batch
    config = SamplingConfig(guidance_scale=3.0, seed=0)
    generate(model, prompts[:1], "audio", config, use_cache=use_cache)  # warm-up
    tic = time.perf_counter()
    for _ in range(repeats):
        generate(model, prompts, "audio", config, use_cache=use_cache)
    seconds = (time.perf_counter() - tic) / repeats
    audio_seconds = batch * frames * 320 / 16000
    return {"pattern": pattern, "batch": batch, "kv_cache": use_cache, "transformer_calls_per_second_of_audio":
            spec.num_tokens / (frames * 320 / 16000), "seconds": round(seconds, 3),
            "real_time_factor": round(seconds / audio_seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", nargs="+", default=["delay", "flat", "parallel"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--uncached-batches", type=int, nargs="+", default=[1], help="recompute is slow: these only")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for pattern in args.patterns:
        for batch in args.batches:
            for use_cache in (True, False):
                if not use_cache and batch not in args.uncached_batches:
                    continue
                rows.append(measure(pattern, batch, use_cache, args.repeats, frames=50, levels=4))
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
