"""Text-to-image with a trained mmar pipeline (any head).

    python demos/text_to_image.py --model runs/quickstart/pipeline --prompt "a red circle at the top left" --num 4
"""

from __future__ import annotations

import argparse
import sys

from mmar.images import captioned_grid, save_atomic
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
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--out", default="text_to_image.png")
    args = parser.parse_args(argv)
    try:
        pipeline = Pipeline.from_pretrained(args.model)
        images = pipeline(args.prompt, num_images_per_prompt=args.num, modality=args.modality, guidance_scale=args.cfg,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"text_to_image: error: {error}", file=sys.stderr)
        return 2
    save_atomic(captioned_grid(images, [args.prompt] * len(images), columns=min(8, len(images))), args.out)
    print(f"wrote {len(images)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
