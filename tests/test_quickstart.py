"""The quickstart end to end on a seconds-long recipe: every promised file is written and loadable."""

import json

from mmar.pipeline import Pipeline
from trainers.quickstart import run_quickstart


def test_tiny_quickstart_writes_everything(tmp_path):
    out = tmp_path / "qs"
    report = run_quickstart("next_token", out, tiny=True, num_prompts=4, per_prompt=1)
    for name in ("samples.png", "curves.png", "report.md", "report.json", "pipeline/pipeline.json",
                 "tokenizer_run/config.json", "ar_run/config.json", "ar_run/metrics.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["prompt_following"]["count"] == 4 and set(saved["prompt_following"]) >= {"color", "shape", "position", "all"}
    assert 0 <= report["prompt_following"]["all"] <= 1 and saved["tokenizer"]["psnr"] > 0
    assert Pipeline.from_pretrained(out / "pipeline").head == "next_token"
