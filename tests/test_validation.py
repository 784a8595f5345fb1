"""Validation: the seeded split, its survival across resume, the best-checkpoint export, the memorising
warning, and the stored sampling defaults a pipeline uses unless told otherwise."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch

from mmar.data.split import validation_split, validation_size
from mmar.generate import SamplingConfig
from mmar.images import to_pil
from mmar.pipeline import SAMPLING_DEFAULTS, Pipeline
from trainers.ar import train_ar
from trainers.common import OptimConfig, RunConfig
from trainers.recipes import tiny_ar
from trainers.tune import TuneConfig, metric
from trainers.validation import memorising


def test_split_is_disjoint_complete_and_seeded():
    train, held = validation_split(1000, 150, seed=3)
    assert len(held) == 150 and len(train) == 850
    assert set(train.tolist()).isdisjoint(held.tolist()) and set(train.tolist()) | set(held.tolist()) == set(range(1000))
    again_train, again_held = validation_split(1000, 150, seed=3)
    assert torch.equal(held, again_held) and torch.equal(train, again_train)
    assert not torch.equal(held, validation_split(1000, 150, seed=4)[1])
    assert validation_size(40, 1000) == 8 and len(validation_split(40, 1000, 0)[1]) == 8  # at most a fifth
    assert len(validation_split(40, 0, 0)[1]) == 0 and len(validation_split(4, 10, 0)[1]) == 0
    with pytest.raises(ValueError, match="empty"):
        validation_split(0, 10, 0)


def _overfit_config(out, tokenizer_dir, steps=60, **run):
    """Eight training items, two held out, a model that can memorise them: validation loss turns up."""
    config = tiny_ar("next_token", str(out), str(tokenizer_dir))
    image = config.modalities["image"]
    image.data = dataclasses.replace(image.data, num_items=10, validation=2)
    config.model = dataclasses.replace(config.model, dim=64)
    config.caption_dropout = 0.0
    config.optim = OptimConfig(steps=steps, batch_size=8, learning_rate=5e-3, warmup_steps=2, ema_beta=0.5,
                               weight_decay=0.0, loss_spike_factor=0)
    config.run = RunConfig(log_every=5, validate_every=5, sample_every=0, checkpoint_every=20, progress=False, **run)
    config.tune = TuneConfig(enabled=False)
    return config


def test_best_validation_step_is_exported_and_memorising_is_reported(tmp_path, tokenizer_dir, caplog):
    out = tmp_path / "overfit"
    with caplog.at_level(logging.WARNING, logger="trainers.ar"):
        export = train_ar(_overfit_config(out, tokenizer_dir))
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validation = {r["step"]: r["validation/loss"] for r in log if "validation/loss" in r}
    assert sorted(validation) == list(range(5, 61, 5))
    best_step = min(validation, key=validation.get)
    assert validation[60] > validation[best_step] * 1.02, validation  # the run really overfits
    fit = {r["step"]: r["fit/loss"] for r in log if "fit/loss" in r}
    assert fit[60] < fit[best_step]  # ... while the loss on training items keeps falling
    record = json.loads((out / "best.json").read_text())
    assert record["step"] == best_step and record["validation_loss"] == pytest.approx(validation[best_step])
    exported = (export / "model" / "model.safetensors").read_bytes()
    assert exported == (out / "best" / "model" / "model.safetensors").read_bytes()
    assert any("memorising" in r.message and "optim.steps" in r.message for r in caplog.records)


def test_split_and_best_survive_resume(tmp_path, tokenizer_dir):
    straight, split = tmp_path / "straight", tmp_path / "split"
    torch.set_num_threads(1)
    try:
        for out, stop_at in ((straight, None), (split, 20), (split, None)):
            config = _overfit_config(out, tokenizer_dir, steps=40, stop_at=stop_at)
            config.export = "last"
            train_ar(config, resume=stop_at is None and out == split)
    finally:
        torch.set_num_threads(2)
    assert json.loads((straight / "best.json").read_text()) == json.loads((split / "best.json").read_text())
    model = lambda out: (out / "pipeline" / "model" / "model.safetensors").read_bytes()  # noqa: E731
    assert model(straight) == model(split)  # export="last": the step-40 EMA, equal after a resume
    if json.loads((split / "best.json").read_text())["step"] != 40:
        assert model(split) != (split / "best" / "model" / "model.safetensors").read_bytes()
    changed = _overfit_config(split, tokenizer_dir, steps=60)
    changed.modalities["image"].data.validation = 1
    with pytest.raises(ValueError, match="another validation split"):  # a resume may not move items between the splits
        train_ar(changed, resume=True)


def test_memorising_rule():
    assert memorising([(10, 3.0, 2.9), (20, 2.5, 2.3)], 20) is None  # still improving
    assert memorising([(10, 3.0, 2.9), (20, 2.5, 2.0), (30, 2.6, 1.5)], 20) is not None
    assert memorising([(10, 2.5, 2.45), (20, 2.6, 2.55)], 10) is None  # a rise without a gap: noise, not memory


def test_tuning_metric_prefers_accuracy_then_low_frechet():
    assert metric({"all": 0.5}) > metric({"all": 0.4})
    assert metric({"frechet": 1.0}) > metric({"frechet": 2.0})


def test_stored_sampling_defaults_are_used_unless_overridden(tmp_path, tokenizer_dir):
    config = _overfit_config(tmp_path / "run", tokenizer_dir, steps=4)
    config.tune = TuneConfig(guidance=(1.0, 2.0), num_prompts=2, per_prompt=1)
    pipeline = Pipeline.from_pretrained(train_ar(config))
    tuned = pipeline.sampling["image"]
    assert tuned["guidance_scale"] in (1.0, 2.0) and (tmp_path / "run" / "tuning" / "image.json").is_file()

    pipeline.sampling["image"] = {"guidance_scale": 1.0, "temperature": 0.0}  # greedy, unguided
    prompts = ["a red circle at the top left"]
    stored = pipeline.generate_tokens(prompts, _config(guidance_scale=1.0, temperature=0.0))
    assert _same(pipeline(prompts), pipeline, stored)  # no option given: the stored settings
    assert pipeline.sampling_defaults("image") == {**SAMPLING_DEFAULTS, "guidance_scale": 1.0, "temperature": 0.0}
    overridden = pipeline.generate_tokens(prompts, _config(guidance_scale=1.0, temperature=1.0, seed=5))
    assert _same(pipeline(prompts, temperature=1.0, seed=5), pipeline, overridden)  # any option wins
    assert not _same(pipeline(prompts, temperature=1.0, seed=5), pipeline, stored)

    saved = pipeline.save_pretrained(tmp_path / "saved")
    assert Pipeline.from_pretrained(saved).sampling["image"] == {"guidance_scale": 1.0, "temperature": 0.0}
    manifest = json.loads((saved / "pipeline.json").read_text())
    manifest["sampling"]["image"]["temperature"] = -1
    (saved / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="temperature"):
        Pipeline.from_pretrained(saved)


def _config(**values):
    return SamplingConfig(**{**SAMPLING_DEFAULTS, **values})


def _same(images, pipeline, tokens) -> bool:
    """Do the PIL images equal the decoded `tokens`, pixel for pixel?"""
    decoded = [to_pil(item) for item in pipeline.tokenizers["image"].decode(tokens)]
    return len(images) == len(decoded) and all(np.array_equal(np.asarray(a), np.asarray(b))
                                               for a, b in zip(images, decoded))


def test_small_data_resizes_the_shorthand_but_never_a_given_key(tokenizer_dir):
    from trainers.ar import single_run
    from trainers.sizing import MAX_EPOCHS, fit_to_data

    config, _ = single_run("runs/x", str(tokenizer_dir), "next_token")
    changes = fit_to_data(config, 1_400, given={"optim.weight_decay"})
    assert config.optim.steps == -(-MAX_EPOCHS * 1_400 // config.optim.batch_size) and config.optim.steps < 2_000
    assert config.model.dropout == 0.1 and config.optim.weight_decay == 0.05  # the given key stays
    assert config.model.dim == 128 and config.model.dim % config.model.num_heads == 0
    assert any(c.startswith("optim.steps 2000 -> ") and "1,400 training items" in c for c in changes)
    big, _ = single_run("runs/x", str(tokenizer_dir), "next_token")
    assert fit_to_data(big, 200_000, given=set()) == [] and big.model.dropout == 0.0  # plenty of data: as is


def test_tokenizer_trainer_validates_and_exports_its_best(tmp_path):
    from trainers.recipes import tiny_tokenizer
    from trainers.tokenizer import train_tokenizer

    config = tiny_tokenizer("next_token", str(tmp_path / "tok"))
    config.data = dataclasses.replace(config.data, validation=8)
    config.optim = dataclasses.replace(config.optim, steps=4)
    config.run = dataclasses.replace(config.run, validate_every=2)
    export = train_tokenizer(config)
    log = [json.loads(line) for line in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["validation/loss"] for r in log if "validation/loss" in r}
    assert sorted(losses) == [2, 4]
    record = json.loads((tmp_path / "tok" / "best.json").read_text())
    assert record["step"] == min(losses, key=losses.get) and (export / "model.safetensors").is_file()
