"""ONE model over a mixture: every head trains at once, the export generates every modality and
captions; tokens are cached by identity; mismatched heads fail before anything is encoded."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from mmar.pipeline import Pipeline
from tokenizers_vq import TOKENIZERS
from trainers.ar import ModalityRun, train_ar
from trainers.common import DataConfig, OptimConfig, RunConfig
from trainers.recipes import HEAD_TOKENIZER, JOINT_RUNS, tiny_joint


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Random-weight tokenizers of the three image kinds (saved like trained ones)."""
    root = tmp_path_factory.mktemp("joint_tok")
    dirs = {}
    for name, head in JOINT_RUNS.items():
        torch.manual_seed(0)
        cls = TOKENIZERS[HEAD_TOKENIZER[head]]
        small = {"block_out_channels": (8, 16, 16), "norm_num_groups": 8} if head == "flow_matching" \
            else {"base_channels": 8}
        cls(cls.Config(**small)).save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def _config(out, tokenizers, steps=30):
    config = tiny_joint(str(out), tokenizers)
    for run in config.modalities.values():
        run.data = dataclasses.replace(run.data, num_items=48)
    config.optim = OptimConfig(steps=steps, batch_size=12, learning_rate=3e-3, warmup_steps=2, ema_beta=0.9)
    config.run = RunConfig(log_every=5, sample_every=steps, checkpoint_every=steps, progress=False)
    return config


@pytest.fixture(scope="module")
def joint_run(tokenizers, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "run"
    return out, train_ar(_config(out, tokenizers))


def test_every_head_trains_at_once_and_its_loss_falls(joint_run):
    out, _ = joint_run
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    log = [r for r in log if "loss/text" in r]  # the training records (validation ones are apart)
    for name in ("text", *JOINT_RUNS):
        first, last = log[0][f"loss/{name}"], log[-1][f"loss/{name}"]
        assert last < first, (name, first, last)
    assert (out / "samples" / "step-0000030.png").is_file()  # one row per modality
    assert sorted(p.name for p in (out / "tokens").iterdir()) == sorted(JOINT_RUNS)


def test_the_export_generates_every_modality_and_captions(joint_run):
    _, export = joint_run
    pipe = Pipeline.from_pretrained(export)
    assert pipe.modalities == list(JOINT_RUNS) and pipe.sources == {name: "shapes" for name in JOINT_RUNS}
    for name in pipe.modalities:
        images = pipe("a red circle at the top left", 2, modality=name, seed=0, guidance_scale=2.0)
        assert [im.size for im in images] == [(32, 32)] * 2 and pipe.last_modalities == [name, name]
    chosen = pipe(["a red circle at the top left"] * 6, seed=1)  # no modality: the text head picks
    assert len(chosen) == 6 and set(pipe.last_modalities) <= set(JOINT_RUNS)
    with pytest.raises(ValueError, match="modality"):
        pipe.modality  # several: say which
    with pytest.raises(ValueError, match="no modality 'video'"):
        pipe("a red circle", modality="video")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    greedy = pipe.caption(images)
    assert len(greedy) == 3 and all(isinstance(text, str) for text in greedy)
    assert greedy == pipe.caption(images, seed=5)  # greedy ignores the seed
    assert pipe.caption(images, temperature=1.0, seed=2) == pipe.caption(images, temperature=1.0, seed=2)
    assert len(pipe.caption(images[0], modality="image_flow")) == 1


def test_a_changed_tokenizer_re_encodes(tokenizers, tmp_path, caplog):
    config = _config(tmp_path / "run", tokenizers, steps=2)
    config.modalities = {"only": ModalityRun(tokenizer=tokenizers["image_token"], data=DataConfig(num_items=16))}
    config.run = dataclasses.replace(config.run, sample_every=0)
    train_ar(config)
    index = tmp_path / "run" / "tokens" / "only" / "index.json"
    before = json.loads(index.read_text())["identity"]
    torch.manual_seed(1)  # other weights under the same folder name
    TOKENIZERS["image_vq"](TOKENIZERS["image_vq"].Config(base_channels=8)).save_pretrained(tmp_path / "other")
    config.modalities["only"].tokenizer = str(tmp_path / "other")
    with caplog.at_level("WARNING"):
        train_ar(config)
    after = json.loads(index.read_text())["identity"]
    assert after["tokenizer_sha256"] != before["tokenizer_sha256"]
    assert any("re-encoding" in record.message and "weights changed" in record.message for record in caplog.records)
    config.modalities["only"].data = dataclasses.replace(config.modalities["only"].data, num_items=12)
    with caplog.at_level("WARNING"):
        train_ar(config)
    assert any("data config changed" in record.message for record in caplog.records)
    assert json.loads(index.read_text())["num_items"] == 12


def test_a_head_that_cannot_predict_its_tokenizer_fails_before_encoding(tokenizers, tmp_path):
    out = tmp_path / "bad"
    result = subprocess.run([sys.executable, "-m", "mmar.cli", "train", "--tokenizer", tokenizers["image_token"],
                             "--head", "next_scale", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'next_scale' predicts multi-scale codes" in lines[0] and "next_token" in lines[0]
    assert not (out / "tokens").exists()  # nothing was encoded


def test_train_config_file_and_the_cli_caption_and_modality(tokenizers, tmp_path, joint_run):
    _, export = joint_run
    image = tmp_path / "in.png"
    Pipeline.from_pretrained(export)("a red circle", modality="image_scale", seed=0)[0].save(image)
    run = lambda *a: subprocess.run([sys.executable, "-m", "mmar.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    caption = run("caption", "--model", str(export), "--image", str(image), str(image), "--num", "2",
                  "--temperature", "1")
    assert caption.returncode == 0, caption.stderr
    assert len(caption.stdout.strip().splitlines()) == 4 and caption.stdout.startswith(str(image))
    generated = run("generate", "--model", str(export), "--modality", "image_flow", "--prompt", "a blue square",
                    "--num", "2", "--steps", "2", "--out", str(tmp_path / "g"))
    assert generated.returncode == 0, generated.stderr
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["000.png", "001.png"]
    wrong = run("generate", "--model", str(export), "--modality", "image_token", "--prompt", "a", "--steps", "2")
    assert wrong.returncode == 2 and "flow_matching" in wrong.stderr
    config = tmp_path / "mix.json"
    config.write_text(json.dumps({"modalities": {
        "a": {"tokenizer": tokenizers["image_token"], "head": "next_token", "data": {"num_items": 16}},
        "b": {"tokenizer": tokenizers["image_flow"], "head": "flow_matching", "data": {"num_items": 16}}},
        "model": {"dim": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2},
        "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1}, "run": {"progress": False, "sample_every": 0}}))
    trained = run("train", "--config", str(config), "--out", str(tmp_path / "mix"), "--set", "modalities.b.loss_weight=2")
    assert trained.returncode == 0, trained.stderr
    saved = json.loads((tmp_path / "mix" / "config.json").read_text())
    assert saved["modalities"]["b"]["loss_weight"] == 2.0
    assert Pipeline.from_pretrained(tmp_path / "mix" / "pipeline").modalities == ["a", "b"]
