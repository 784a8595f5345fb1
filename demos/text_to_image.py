"""Text-to-image with a trained mmar pipeline (any head).

    python demos/text_to_image.py --model runs/quickstart/pipeline --prompt "a red circle at the top left" --num 4
"""

from __future__ import annotations

import argparse
import sys

from mmar.images import captioned_grid, save_atomic
from mmar.cli import add_sampling_arguments, sampling_options
from mmar.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate images from a text prompt with a trained mmar pipeline. "
                                     "Writes a captioned grid PNG.")
    parser.add_argument("--model", default="runs/quickstart/pipeline", help="pipeline folder")
    parser.add_argument("--modality", default=None, help="which image modality of a many-modality pipeline "
                        "(default: its only one, or the text head chooses)")
    parser.add_argument("--prompt", default="a red circle at the top left")
    parser.add_argument("--num", type=int, default=4, help="images to generate")
    parser.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(parser)
    parser.add_argument("--out", default="text_to_image.png")
    args = parser.parse_args(argv)
    try:
        pipeline = Pipeline.from_pretrained(args.model)
        images = pipeline(args.prompt, num_images_per_prompt=args.num, modality=args.modality, seed=args.seed,
                         **sampling_options(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"text_to_image: error: {error}", file=sys.stderr)
        return 2
    save_atomic(captioned_grid(images, [args.prompt] * len(images), columns=min(8, len(images))), args.out)
    print(f"wrote {len(images)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
