"""Text-to-video with a trained mmar pipeline (next_token or flow_matching video head).

    python demos/text_to_video.py --model runs/video/pipeline --prompt "a red circle moving left" --out clip.mp4

`--out` ending in .mp4 writes an H.264 MP4, .gif an animated GIF (several samples play side by
side, captioned); any other path is a folder with one MP4 per sample. `--fps` sets the frame rate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmar.cli import add_sampling_arguments, sampling_options
from mmar.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate video clips from a text prompt with a trained mmar "
                                     "pipeline. Writes an MP4 or GIF (.mp4 / .gif), or one MP4 per sample into a "
                                     "folder.")
    parser.add_argument("--model", default="runs/video/pipeline", help="pipeline folder")
    parser.add_argument("--modality", default=None, help="which video modality of a many-modality pipeline "
                        "(default: its only one, or the first video modality)")
    parser.add_argument("--prompt", default="a red circle moving left")
    parser.add_argument("--num", type=int, default=1, help="clips to generate")
    parser.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(parser)
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the written files")
    parser.add_argument("--out", default="text_to_video.mp4", help="a .mp4 or .gif file, or a folder")
    args = parser.parse_args(argv)
    from mmar.media import save_media, video_grid

    try:
        if args.num < 1 or not args.fps > 0:
            raise ValueError(f"--num must be at least 1 and --fps positive, got {args.num} and {args.fps}")
        pipeline = Pipeline.from_pretrained(args.model)
        modality = args.modality or pipeline.caption_modality("video")  # the first video modality
        clips = pipeline(args.prompt, num_images_per_prompt=args.num, modality=modality, seed=args.seed,
                         **sampling_options(args))
        out = Path(args.out)
        if out.suffix.lower() in (".mp4", ".gif"):
            captions = [args.prompt] * len(clips)
            clip = clips[0] if len(clips) == 1 else video_grid(clips, captions, columns=min(8, len(clips)))
            save_media("video", clip, out, fps=args.fps)
        elif out.suffix:
            raise ValueError(f"--out {out}: give a .mp4 or .gif file, or a folder")
        else:
            for index, clip in enumerate(clips):
                save_media("video", clip, out / f"{index:03d}.mp4", fps=args.fps)
    except (ValueError, FileNotFoundError) as error:
        print(f"text_to_video: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(clips)} clip{'s' if len(clips) > 1 else ''} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
