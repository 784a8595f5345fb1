"""Write Fashion-MNIST as a user's image folder (HuggingFace convention), to try mmar as a new user would.

    python demos/fashion_mnist_folder.py --out data/fashion_mnist --num 6000
    mmar train-tokenizer --tokenizer image_vq --out runs/fm_vq --set data.source=folder --set data.path=data/fashion_mnist
    mmar train --tokenizer runs/fm_vq/tokenizer --out runs/fm_ar --set data.source=folder --set data.path=data/fashion_mnist

The folder holds `metadata.jsonl` (`{"file_name": "00000.png", "text": "a photo of a sneaker"}`) and
one 28x28 greyscale PNG per item: the first `--num` items of the package's train split (needs the
Debian package `dataset-fashion-mnist`). Written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

from mmar.data.fashion_mnist import FILES, IMAGE_MAGIC, LABEL_MAGIC, DEFAULT_ROOT, _find, caption, read_idx


def write_folder(out: Path, num: int, split: str = "train", root: Path = DEFAULT_ROOT) -> Path:
    images = read_idx(_find(root, FILES[split][0]), IMAGE_MAGIC, num)  # (N, 28, 28) uint8
    labels = read_idx(_find(root, FILES[split][1]), LABEL_MAGIC, num)  # (N,)
    temporary = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    lines = []
    for index, (pixels, label) in enumerate(zip(images, labels)):
        name = f"{index:05d}.png"
        Image.fromarray(pixels, mode="L").save(temporary / name)
        lines.append(json.dumps({"file_name": name, "text": caption(int(label))}))
    (temporary / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    temporary.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/fashion_mnist"), help="the folder to write")
    parser.add_argument("--num", type=int, default=6000, help="how many items (the first of the split)")
    parser.add_argument("--split", choices=sorted(FILES), default="train")
    args = parser.parse_args()
    print(write_folder(args.out, args.num, args.split))


if __name__ == "__main__":
    main()
