"""Type-checked `--set key=value` overrides."""

import pytest

from mmar.config import apply_overrides, from_dict, load_json, to_dict
from trainers.ar import ARTrainConfig, ModalityRun, single_run
from trainers.tokenizer import TokenizerTrainConfig


def _mixture():
    return ARTrainConfig(modalities={"image": ModalityRun(), "other": ModalityRun(head="flow_matching")})


def test_overrides_are_typed_and_nested():
    config = apply_overrides(_mixture(), ["optim.steps=7", "model.dim=96", "optim.learning_rate=1e-3", "run.cpu=true",
                                          "modalities.image.data.path=/tmp/x",
                                          "modalities.other.sample_prompts=[\"a\", \"b\"]",
                                          "modalities.other.mix_weight=3"])
    assert config.optim.steps == 7 and config.model.dim == 96 and config.optim.learning_rate == 1e-3
    image, other = config.modalities["image"], config.modalities["other"]
    assert config.run.cpu is True and image.data.path == "/tmp/x" and other.sample_prompts == ("a", "b")
    assert other.mix_weight == 3.0 and other.data.path is None and other.head == "flow_matching"
    assert ARTrainConfig().optim.steps != 7 and _mixture().modalities["image"].data.path is None  # defaults untouched


def test_one_modality_shorthand_spells_run_keys_short(tmp_path):
    (tmp_path / "config.json").write_text('{"class": "image_vq"}')
    config, overrides = single_run("runs/x", str(tmp_path), "next_scale", ["data.source=folder", "optim.steps=3",
                                                                           "head_config.bias=true"])
    config = apply_overrides(config, overrides)
    run = config.modalities["image"]  # named after the tokenizer's medium
    assert run.data.source == "folder" and run.head == "next_scale" and run.head_config == {"bias": True}
    assert config.optim.steps == 3


def test_a_mixture_loads_from_json(tmp_path):
    path = tmp_path / "joint.json"
    path.write_text('{"out": "runs/j", "modalities": {"a": {"tokenizer": "t1", "head": "next_token"}, '
                    '"b": {"tokenizer": "t2", "head": "flow_matching", "loss_weight": 2, "data": {"source": "folder"}}}}')
    config = load_json(ARTrainConfig, path)
    assert list(config.modalities) == ["a", "b"] and config.modalities["b"].loss_weight == 2.0
    assert config.modalities["b"].data.source == "folder" and config.modalities["a"].data.source == "shapes"
    path.write_text('{"modalities": {"a": {"tokenizer": "t1", "heads": "next_token"}}}')
    with pytest.raises(ValueError, match="unknown ModalityRun keys"):
        load_json(ARTrainConfig, path)


def test_int_is_accepted_for_float_and_free_dicts_take_json():
    config = apply_overrides(TokenizerTrainConfig(), ["optim.learning_rate=1", "tokenizer_config.codebook_size=64"])
    assert config.optim.learning_rate == 1.0 and config.tokenizer_config == {"codebook_size": 64}


@pytest.mark.parametrize("item, message", [
    ("optim.stepz=3", "unknown config key 'optim.stepz'"),
    ("nope=1", "unknown config key 'nope'"),
    ("optim.steps=three", "expects int"),
    ("optim.steps=1.5", "expects int"),
    ("run.cpu=maybe", "expects bool"),
    ("optim=3", "is a group"),
    ("optim.steps", "key=value"),
    ("modalities.video.head=next_token", "no entry 'video'"),
    ("modalities.image=3", "set a field of one entry"),
    ("modalities.image.data.sauce=x", "unknown config key"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(_mixture(), [item])


def test_dict_round_trip():
    config = apply_overrides(_mixture(), ["model.num_layers=3"])
    assert from_dict(ARTrainConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="unknown"):
        from_dict(ARTrainConfig, {"bogus": 1})
