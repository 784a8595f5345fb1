"""Type-checked `--set key=value` overrides."""

import pytest

from mmar.config import apply_overrides, from_dict, to_dict
from trainers.ar import ARTrainConfig
from trainers.tokenizer import TokenizerTrainConfig


def test_overrides_are_typed_and_nested():
    config = apply_overrides(ARTrainConfig(), ["optim.steps=7", "model.dim=96", "optim.learning_rate=1e-3",
                                               "run.cpu=true", "data.path=/tmp/x", "sample_prompts=[\"a\", \"b\"]"])
    assert config.optim.steps == 7 and config.model.dim == 96 and config.optim.learning_rate == 1e-3
    assert config.run.cpu is True and config.data.path == "/tmp/x" and config.sample_prompts == ("a", "b")
    assert ARTrainConfig().optim.steps != 7  # the default is untouched


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
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(ARTrainConfig(), [item])


def test_dict_round_trip():
    config = apply_overrides(ARTrainConfig(), ["model.num_layers=3"])
    assert from_dict(ARTrainConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="unknown"):
        from_dict(ARTrainConfig, {"bogus": 1})
