"""Training: exact resume, two CPU ranks ending identical, crash-safe checkpoints, the non-finite guard."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tokenizers_vq import TOKENIZERS
from trainers.ar import train_ar
from trainers.checkpoint import list_checkpoints, load_latest, save_checkpoint
from trainers.common import RunConfig
from trainers.recipes import tiny_ar, tiny_tokenizer
from trainers.tokenizer import train_tokenizer


def _config(out, tokenizer_dir, steps=6, **run):
    config = tiny_ar("next_token", str(out), str(tokenizer_dir))
    image = config.modalities["image"]
    image.data = dataclasses.replace(image.data, num_items=64)
    config.optim = dataclasses.replace(config.optim, steps=steps)
    config.run = RunConfig(log_every=1, sample_every=0, checkpoint_every=3, progress=False, **run)
    return config


def _digest(out):
    return json.loads((out / "ranks.json").read_text())["weights_sha256"][0]


def test_resume_is_bitwise_exact(tmp_path, tokenizer_dir):
    torch.set_num_threads(1)
    try:
        straight = tmp_path / "straight"
        train_ar(_config(straight, tokenizer_dir))
        split = tmp_path / "split"
        assert train_ar(_config(split, tokenizer_dir, stop_at=3)) == split / "checkpoints"
        assert [p.name for p in list_checkpoints(split / "checkpoints")] == ["step-0000003"]
        train_ar(_config(split, tokenizer_dir), resume=True)
    finally:
        torch.set_num_threads(2)
    assert _digest(straight) == _digest(split)
    model = lambda out: (out / "pipeline" / "model" / "model.safetensors").read_bytes()  # noqa: E731  EMA export
    assert model(straight) == model(split)
    straight_log = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    split_log = [json.loads(l) for l in (split / "metrics.jsonl").read_text().splitlines()]
    measured = lambda log: [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in log]  # noqa: E731
    assert measured(straight_log) == measured(split_log)  # training and validation records alike
    assert any("validation/loss/image" in r for r in split_log)


def test_two_cpu_ranks_end_identical(tmp_path, tokenizer_dir):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "mmar.cli", "train", "--tokenizer", str(tokenizer_dir), "--out", str(out),
               "--set", "run.cpu=true", "--set", "run.progress=false", "--set", "run.sample_every=0",
               "--set", "optim.steps=3", "--set", "optim.batch_size=8", "--set", "optim.grad_accum=2",
               "--set", "data.num_items=64", "--set", "model.num_heads=4", "--set", "model.num_kv_heads=2",
               "--set", "model.dim=32", "--set", "model.num_layers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["num_processes"] == 2
    assert len(ranks["weights_sha256"]) == 2 and ranks["weights_sha256"][0] == ranks["weights_sha256"][1]
    assert (out / "pipeline" / "pipeline.json").is_file()


def test_tokenizer_training_writes_a_report(tmp_path):
    config = tiny_tokenizer("next_token", str(tmp_path / "tok"))
    config.tokenizer_config = {"base_channels": 16}
    export = train_tokenizer(config)
    report = json.loads((tmp_path / "tok" / "report.json").read_text())
    assert report["psnr"] > 0 and 0 < report["codebook_usage"] <= 1
    assert (export / "config.json").is_file() and (tmp_path / "tok" / "reconstructions.png").is_file()


def _state(value):
    return {"model": {"w": torch.full((3,), float(value))}, "ema": {"w": torch.zeros(3)},
            "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "trainer": {"data_order": {"epoch": 0, "position": value}}}


def test_checkpoints_prune_after_commit_and_skip_damage(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, keep=2, **_state(step))
    assert [p.name for p in list_checkpoints(root)] == ["step-0000002", "step-0000003"]
    (root / "step-0000003" / "model.safetensors").write_bytes(b"garbage")  # a damaged newest checkpoint
    (root / ".tmp-step-0000004").mkdir()  # a save killed half-way
    latest = load_latest(root)
    assert latest["trainer"]["step"] == 2 and torch.equal(latest["model"]["w"], torch.full((3,), 2.0))
    assert latest["optimizer"]["param_groups"][0]["lr"] == 0.1


def test_nan_learning_rate_stops_training_with_a_clear_error(tmp_path, tokenizer_dir):
    config = _config(tmp_path / "nan", tokenizer_dir)
    config.optim = dataclasses.replace(config.optim, learning_rate=1e30, max_nonfinite=2)
    # a huge learning rate blows the weights up after the first step, so the next losses are non-finite
    with pytest.raises(FloatingPointError, match="diverged"):
        train_ar(config)


def test_two_cpu_ranks_train_a_mixture_with_heads_unused_in_a_step(tmp_path, tokenizer_dir):
    """DDP over gloo with two heads and captioning. Each micro-batch holds ONE sample (batch 4 = 2 ranks
    x 2 micro-batches), so every synced backward lacks the other modality's head: DDP raises there
    unless told that parameters may go unused (find_unused_parameters)."""
    torch.manual_seed(0)
    TOKENIZERS["image_kl"](TOKENIZERS["image_kl"].Config(block_out_channels=(8, 16, 16), norm_num_groups=8)) \
        .save_pretrained(tmp_path / "kl")
    config = tmp_path / "mix.json"
    config.write_text(json.dumps({"modalities": {
        "vq": {"tokenizer": str(tokenizer_dir), "head": "next_token", "caption_weight": 0.5, "data": {"num_items": 32}},
        "kl": {"tokenizer": str(tmp_path / "kl"), "head": "flow_matching", "mix_weight": 0.3, "data": {"num_items": 32}}},
        "model": {"dim": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2},
        "optim": {"steps": 4, "batch_size": 4, "grad_accum": 2, "warmup_steps": 1},
        "run": {"cpu": True, "progress": False, "sample_every": 0, "log_every": 1}}))
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
               "-m", "mmar.cli", "train", "--config", str(config), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["num_processes"] == 2 and ranks["weights_sha256"][0] == ranks["weights_sha256"][1]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    log = [r for r in log if "loss/text" in r]  # the training records (validation ones are apart)
    assert len(log) == 4 and all(set(r) >= {"loss/text", "loss/vq", "loss/kl"} for r in log)
