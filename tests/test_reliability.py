"""Reliability: divergence never poisons checkpoints, one run owns its folder, every value and file
is validated, OS errors and signals end in one line, and the smaller holes (prune, metadata lines,
huge images) are closed. Kill and lock tests use real subprocesses and real signals."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_model

from mmar.cli import main, os_error_line
from mmar.config import apply_overrides, load_json
from mmar.files import file_hashes, sha256, verify_manifest
from mmar.generate import SamplingConfig
from mmar.lock import FolderInUse, folder_lock
from mmar.model import MMAR
from mmar.pipeline import Pipeline
from tests.conftest import tiny_pipeline
from tokenizers_vq import TOKENIZERS, load_tokenizer
from trainers.ar import ARTrainConfig, single_run, train_ar
from trainers.checkpoint import list_checkpoints, load_latest, save_checkpoint
from trainers.common import RunConfig
from trainers.divergence import MIN_HISTORY, Divergence, DivergenceGuard
from trainers.recipes import tiny_ar

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _config(out, tokenizer_dir, steps=6, **run) -> ARTrainConfig:
    config = tiny_ar("next_token", str(out), str(tokenizer_dir))
    image = config.modalities["image"]
    image.data = dataclasses.replace(image.data, num_items=32)
    config.optim = dataclasses.replace(config.optim, steps=steps)
    config.run = RunConfig(log_every=1, sample_every=0, checkpoint_every=1, keep_checkpoints=2, progress=False, **run)
    return config


def _cli(capsys, *argv) -> tuple[int, str]:
    """Run `mmar ARGV` in-process; (exit code, stderr), whether argparse or the command refused it."""
    try:
        code = main(list(map(str, argv)))
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- 1. divergence -------------------------------------------------------------------------------
def test_guard_skips_nonfinite_steps_and_spikes_then_stops(tmp_path):
    guard = DivergenceGuard(max_skipped=3, loss_spike_factor=5.0, checkpoints=tmp_path)
    one = torch.tensor(1.0)
    assert guard.allow(0, one, one) and guard.healthy
    assert not guard.allow(1, torch.tensor(math.nan), one) and not guard.healthy
    assert guard.allow(2, one, one) and guard.healthy  # an applied step resets the count
    for step in range(MIN_HISTORY):
        assert guard.allow(3 + step, one, torch.tensor(1.0 + 0.01 * step))
    assert guard.allow(100, one, torch.tensor(4.0))  # below 5 x the median: applied
    assert not guard.allow(101, one, torch.tensor(50.0))  # a spike: skipped
    assert not guard.allow(102, one, torch.tensor(math.inf))
    with pytest.raises(Divergence, match="3 steps in a row skipped.*no checkpoint was written yet"):
        guard.allow(103, one, torch.tensor(60.0))
    with pytest.raises(Divergence, match="step 7 made the EMA non-finite"):
        guard.check_state(7, {"weights": [torch.ones(3)], "EMA": [torch.tensor([1.0, math.nan])]})


def test_a_new_phase_measures_spikes_against_its_own_steps(tmp_path):
    guard = DivergenceGuard(max_skipped=3, loss_spike_factor=5.0, checkpoints=tmp_path)
    one = torch.tensor(1.0)
    for step in range(MIN_HISTORY):
        assert guard.allow(step, one, torch.tensor(0.01))
    assert not guard.allow(100, one, torch.tensor(0.2))  # single frames -> clips: 20x, a spike in the old phase
    guard.new_phase()
    for step in range(MIN_HISTORY):
        assert guard.allow(101 + step, one, torch.tensor(0.2))
    assert not guard.allow(200, one, torch.tensor(2.0))  # the rule is back, on the new phase's median


def test_a_blow_up_never_reaches_a_checkpoint_and_resume_continues_from_the_last_good_one(tmp_path, tokenizer_dir):
    out = tmp_path / "run"
    assert train_ar(_config(out, tokenizer_dir, stop_at=4)) == out / "checkpoints"
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-0000003", "step-0000004"]
    exploding = _config(out, tokenizer_dir)
    exploding.optim = dataclasses.replace(exploding.optim, learning_rate=1e30, warmup_steps=0, max_nonfinite=2)
    with pytest.raises(Divergence, match=r"step 4 made the weights non-finite.*step-0000004.*--resume"):
        train_ar(exploding, resume=True)
    # nothing of the exploded state was written, and the last good checkpoints were not pruned
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-0000003", "step-0000004"]
    state = load_latest(out / "checkpoints")
    assert state["trainer"]["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert train_ar(_config(out, tokenizer_dir), resume=True) == out / "pipeline"  # the corrected setting
    assert Pipeline.from_pretrained(out / "pipeline").modalities == ["image"]


def test_nan_ema_decay_is_refused_before_anything_is_written(tmp_path, tokenizer_dir):
    config = _config(tmp_path / "ema", tokenizer_dir)
    with pytest.raises(ValueError, match="optim.ema_beta.*finite"):
        apply_overrides(config, ["optim.ema_beta=nan"])
    config.optim = dataclasses.replace(config.optim, ema_beta=math.nan)
    with pytest.raises(ValueError, match="ema_beta"):
        train_ar(config)
    assert not (tmp_path / "ema").exists()


def test_a_nonfinite_pipeline_is_never_exported_nor_loaded(tmp_path):
    pipeline = tiny_pipeline("next_token")
    pipeline.save_pretrained(tmp_path / "good")
    with torch.no_grad():
        next(pipeline.model.parameters())[0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        pipeline.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".tmp-*"))
    # a NaN written behind mmar's back, with every hash updated to match: loading still refuses it
    weights = tmp_path / "good" / "model" / "model.safetensors"
    save_model(pipeline.model, str(weights))
    manifest = json.loads((tmp_path / "good" / "pipeline.json").read_text())
    manifest["sha256"]["model/model.safetensors"] = sha256(weights)
    (tmp_path / "good" / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="non-finite"):
        Pipeline.from_pretrained(tmp_path / "good")


# --- 2. one run owns its folder --------------------------------------------------------------------
def test_a_second_run_on_a_locked_folder_is_refused_and_a_dead_holder_blocks_nothing(tmp_path, capsys, tokenizer_dir):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmar.lock import folder_lock\n"
                               f"with folder_lock({str(folder)!r}):\n print('locked', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=f"in use by PID {holder.pid} on "):
            with folder_lock(folder):
                pass
        code, err = _cli(capsys, "train", "--tokenizer", tokenizer_dir, "--out", folder, "--set", "optim.steps=2")
        assert code == 2 and f"in use by PID {holder.pid}" in _one_line(err)
        assert not (folder / "config.json").exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(folder):  # the holder died: its lock went with it, though the .lock file stays
        with folder_lock(folder):  # re-entrant within one process
            assert (folder / ".lock").read_text().startswith(f"PID {os.getpid()} ")


# --- 3. every config value is checked, whole, before anything is written ------------------------
@pytest.mark.parametrize("override, key", [
    ("optim.learning_rate=fast", "optim.learning_rate"), ("optim.learning_rate=nan", "optim.learning_rate"),
    ("optim.learning_rate=-1", "learning_rate"), ("optim.clip=inf", "optim.clip"), ("model.num_heads=0", "num_heads"),
    ("run.seed=-1", "seed"), ("caption_dropout=1.5", "caption_dropout"), ("head=banana", "banana"),
    ("head_config.bias=3", "bias"), ("head_config.bogus=1", "bogus"), ("data.source=imagenet", "imagenet"),
    ("pattern=zigzag", "zigzag"), ("model.dim=30", "dim"),
])
def test_a_bad_value_is_one_line_and_writes_nothing(tmp_path, capsys, tokenizer_dir, override, key):
    code, err = _cli(capsys, "train", "--tokenizer", tokenizer_dir, "--out", tmp_path / "run", "--set", override)
    assert code == 2 and key in _one_line(err)
    assert not (tmp_path / "run").exists()


def test_the_resolved_config_is_validated_once_so_order_does_not_matter(tokenizer_dir):
    config, overrides = single_run("runs/x", str(tokenizer_dir), "next_token")
    for order in (["model.dim=32", "model.num_heads=4"], ["model.num_heads=4", "model.dim=32"]):
        resolved = apply_overrides(config, order)
        assert (resolved.model.dim, resolved.model.num_heads) == (32, 4)


@pytest.mark.parametrize("option", [["--cfg", "nan"], ["--cfg", "inf"], ["--temperature", "nan"], ["--seed", "-1"],
                                    ["--top-p", "0"], ["--device", "banana"], ["--device", "cuda:7"]])
def test_bad_sampling_options_are_one_line(tmp_path, capsys, option):
    tiny_pipeline("next_token").save_pretrained(tmp_path / "p")
    code, err = _cli(capsys, "generate", "--model", tmp_path / "p", "--prompt", "a red circle", "--out", tmp_path / "o.png",
                     *option)
    line = _one_line(err)
    assert code == 2 and (option[0] in line or option[0][2:].replace("-", "_") in line)
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(ValueError, match="finite"):
        SamplingConfig(guidance_scale=math.nan)


# --- 4. every file read from disk is validated --------------------------------------------------
@pytest.mark.parametrize("edit, key", [
    (lambda m: [m], "JSON object"), (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "sha256"),
    (lambda m: {**m, "sha256": "abc"}, "sha256"), (lambda m: {**m, "components": {"image": "tokenizers/image"}}, "model"),
    (lambda m: {**m, "format": "mmar-pipeline/9"}, "format"),
    (lambda m: {**m, "components": {**m["components"], "model": "../elsewhere"}}, "inside"),
])
def test_a_damaged_pipeline_json_is_one_line_naming_the_key(tmp_path, capsys, edit, key):
    tiny_pipeline("next_token").save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / "pipeline.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=key):
        Pipeline.from_pretrained(tmp_path / "p")
    code, err = _cli(capsys, "generate", "--model", tmp_path / "p", "--prompt", "a red circle", "--out", tmp_path / "o.png")
    assert code == 2 and "pipeline.json" in _one_line(err)


@pytest.mark.parametrize("edit, key", [(("transformer", "num_heads"), 0), (("modalities", 0, "codebook_size"), "512"),
                                       (("heads", "image", "name"), "banana"), (("modalities",), [])])
def test_a_hand_edited_model_config_is_a_clear_error(tmp_path, edit, key):
    tiny_pipeline("next_token").model.save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    values = json.loads(path.read_text())
    node = values
    for part in edit[:-1]:
        node = node[part]
    node[edit[-1]] = key
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=str(path)):
        MMAR.from_pretrained(tmp_path / "model")


def test_tokenizer_folders_carry_a_manifest_and_damage_is_caught(tmp_path):
    folder = tmp_path / "tok"
    TOKENIZERS["image_vq"](TOKENIZERS["image_vq"].Config(base_channels=8)).save_pretrained(folder)
    assert json.loads((folder / "manifest.json").read_text()) == file_hashes(folder, ["config.json", "model.safetensors"])
    load_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "codebook_size": "many"}))
    with pytest.raises(ValueError, match="config.json does not match its recorded hash"):
        load_tokenizer(folder)
    (folder / "manifest.json").write_text(json.dumps(file_hashes(folder, ["config.json", "model.safetensors"])))
    with pytest.raises(ValueError, match="config.json.*codebook_size"):
        load_tokenizer(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        load_tokenizer(folder)


def test_resume_falls_back_past_a_checkpoint_that_verifies_but_does_not_load(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(root, step, model={"w": torch.full((2,), float(step))}, ema={"w": torch.zeros(2)},
                        optimizer={"state": {}, "param_groups": []}, trainer={"data_order": {"epoch": 0, "position": 0}})
    def restore(state):
        if state["trainer"]["step"] == 2:
            raise KeyError("data_order")  # e.g. a hand-edited trainer.json whose manifest was re-made
        return state["trainer"]["step"]
    state = load_latest(root, restore)
    assert state["restored"] == 1 and "skipping checkpoint" in caplog.text and "step-0000002" in caplog.text


# --- 5. OS errors ------------------------------------------------------------------------------------
def test_os_errors_are_one_line_and_leave_no_temporary_files(tmp_path, capsys, tokenizer_dir, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(capsys, "train", "--tokenizer", tokenizer_dir, "--out", blocker / "run", "--set", "optim.steps=2")
    assert code == 2 and str(blocker) in _one_line(err)
    tiny_pipeline("next_token").save_pretrained(tmp_path / "p")
    (tmp_path / "taken.png").mkdir()
    code, err = _cli(capsys, "generate", "--model", tmp_path / "p", "--prompt", "a red circle", "--num", 1,
                     "--out", tmp_path / "taken.png")
    assert code == 2 and "taken.png" in _one_line(err) and not list(tmp_path.glob(".taken.png*"))
    assert "disk is full" in os_error_line(OSError(errno.ENOSPC, "No space left on device", "/runs/x"))

    # a full disk half-way through a checkpoint: the temporary folder goes, the earlier checkpoint stays
    import trainers.checkpoint as checkpoint

    root = tmp_path / "checkpoints"
    state = dict(model={"w": torch.ones(2)}, ema={"w": torch.ones(2)}, optimizer={"state": {}, "param_groups": []},
                 trainer={"data_order": {"epoch": 0, "position": 0}})
    save_checkpoint(root, 1, **state)
    real = checkpoint.save_file
    calls = []
    def full_disk(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(tensors, path)
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(root, 2, **state)
    assert [p.name for p in root.iterdir()] == ["step-0000001"]
    verify_manifest(root / "step-0000001")

    # ... and through a pipeline export
    import tokenizers_vq.base as base

    monkeypatch.setattr(base, "save_model", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        tiny_pipeline("next_token").save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []
    Pipeline.from_pretrained(tmp_path / "p")  # the earlier export is intact


def test_sigterm_ends_a_training_run_cleanly(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mmar.cli", "train-tokenizer", "--out", str(out), "--set", "optim.steps=100000",
               "--set", "run.checkpoint_every=2", "--set", "run.progress=false", "--set", "optim.batch_size=4",
               "--set", "data.num_items=64", "--set", "data.validation=8", "--set", "tokenizer_config.base_channels=8"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 240
    while not list_checkpoints(out / "checkpoints") and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "terminated; checkpoints already written are intact" in err and "Traceback" not in err
    for directory in list_checkpoints(out / "checkpoints"):
        verify_manifest(directory)
    assert not list((out / "checkpoints").glob(".tmp-*"))


# --- 6. smaller holes --------------------------------------------------------------------------------
def test_pruning_renames_aside_so_a_kill_never_leaves_half_a_checkpoint(tmp_path, monkeypatch):
    import trainers.checkpoint as checkpoint

    root = tmp_path / "checkpoints"
    state = dict(model={"w": torch.ones(2)}, ema={"w": torch.ones(2)}, optimizer={"state": {}, "param_groups": []},
                 trainer={})
    save_checkpoint(root, 1, keep=1, **state)
    real = checkpoint.shutil.rmtree
    def killed(path, *args, **kwargs):
        if Path(path).name.startswith(".old-"):
            raise KeyboardInterrupt  # killed while deleting
        real(path, *args, **kwargs)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 2, keep=1, **state)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real)
    assert [p.name for p in list_checkpoints(root)] == ["step-0000002"]  # no half-deleted step-0000001
    save_checkpoint(root, 3, keep=1, **state)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000003"]  # the leftover is cleared


def test_a_bad_metadata_line_or_a_huge_image_is_skipped_and_counted(tmp_path, caplog):
    from mmar.data.folder import ImageFolder
    from mmar.images import MAX_PIXELS, open_image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("1", (5000, 5000)).save(tmp_path / "huge.png")  # tiny on disk, 25 M pixels decoded
    lines = [json.dumps({"file_name": "a.png", "text": "red"}).encode(), b'{"file_name": "a.png", "text": "\xff\xfe"}',
             json.dumps({"file_name": "huge.png", "text": "big"}).encode()]
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    folder = ImageFolder(tmp_path, size=8)
    assert len(folder) == 1 and folder.num_skipped == 2
    assert "line 2" in caplog.text
    assert 5000 * 5000 > MAX_PIXELS
    with pytest.raises(ValueError, match="more than"):
        open_image(tmp_path / "huge.png")


def test_a_damaged_tokens_shard_is_found_and_re_encoded(tmp_path, tokenizer_dir):
    from mmar.data.shapes import ShapesDataset
    from mmar.data.tokenized import TokenizedDataset, encode_dataset, stale_reason, tokens_identity

    identity = tokens_identity(tokenizer_dir, {"source": "shapes"})
    directory = encode_dataset(load_tokenizer(tokenizer_dir), ShapesDataset(num_items=8), tmp_path / "tokens",
                               progress=False, identity=identity)
    assert stale_reason(directory, identity) is None and len(TokenizedDataset(directory)) == 8
    shard = directory / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-5])
    assert "damaged" in stale_reason(directory, identity) and "shard-00000" in stale_reason(directory, identity)
