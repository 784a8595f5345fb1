"""How often the notes checker agrees with the dataset's own captions (the issue asks >= 99% on 2,000 clips).

    python demos/check_notes_checker.py --num-items 2000 --seed 123
"""

from __future__ import annotations

import argparse
import collections
import time

from mmar.data.notes import NotesDataset, parse_caption
from mmar.evaluation.notes_checker import check, describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    dataset = NotesDataset(args.num_items, seconds=args.seconds, seed=args.seed)
    tic = time.perf_counter()
    hits, failures = collections.Counter(), []
    for index in range(len(dataset)):
        audio, text = dataset[index]
        _, note, rhythm = parse_caption(text)
        result = check(audio, note, rhythm, dataset.sample_rate)
        hits.update(key for key, value in result.items() if value)
        if not result["all"] and len(failures) < 10:
            failures.append((index, text, describe(audio, dataset.sample_rate)))
    count = len(dataset)
    print({key: round(hits[key] / count, 4) for key in ("pitch", "rhythm", "all")}, f"on {count} clips",
          f"({time.perf_counter() - tic:.1f} s)")
    for failure in failures:
        print("disagrees:", failure)


if __name__ == "__main__":
    main()
