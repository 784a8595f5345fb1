"""Text-to-audio with a trained mmar pipeline: 16-bit PCM WAV files (soundfile).

    python demos/text_to_audio.py --model runs/audio/pipeline --prompt "a pluck playing E4 four times" --out a.wav
    python demos/text_to_audio.py --model runs/audio/pipeline --num 4 --out clips/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmar.media import save_media
from mmar.cli import add_sampling_arguments, sampling_options
from mmar.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate sounds from a text prompt with a trained mmar pipeline. "
                                     "Writes one 16-bit PCM WAV per sample.")
    parser.add_argument("--model", default="runs/audio/pipeline", help="pipeline folder")
    parser.add_argument("--modality", default=None, help="which audio modality of a many-modality pipeline "
                        "(default: its first audio modality)")
    parser.add_argument("--prompt", default="a pluck playing E4 four times")
    parser.add_argument("--num", type=int, default=1, help="clips to generate")
    parser.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(parser)
    parser.add_argument("--out", default="text_to_audio.wav",
                        help="a .wav file (several clips: NAME-000.wav, ...) or a folder for 000.wav, 001.wav, ...")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.num < 1:
            raise ValueError(f"--num must be at least 1, got {args.num}")
        if out.suffix and out.suffix.lower() != ".wav":
            raise ValueError(f"--out {out}: write .wav files, or give a folder")
        pipeline = Pipeline.from_pretrained(args.model)
        modality = args.modality or pipeline.caption_modality("audio")
        clips = pipeline(args.prompt, num_images_per_prompt=args.num, modality=modality, seed=args.seed,
                         **sampling_options(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"text_to_audio: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    if out.suffix:
        paths = [out] if len(clips) == 1 else [out.with_name(f"{out.stem}-{i:03d}.wav") for i in range(len(clips))]
    else:
        paths = [out / f"{i:03d}.wav" for i in range(len(clips))]
    for clip, path in zip(clips, paths):
        save_media("audio", clip, path, **pipeline.save_options(modality))
    print(f"wrote {len(clips)} clip{'s' * (len(clips) > 1)}: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
