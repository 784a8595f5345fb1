"""Multi-codebook (RVQ) audio segments with the flat and delay patterns: packing, and generation that
feeds back exactly what it sampled, never a level not yet sampled, cached == recomputed (float64)."""

import pytest
import torch

from conftest import TINY
from mmar import patterns
from mmar.generate import SamplingConfig, generate
from mmar.layout import ModalitySpec
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.packing import Segment, pack, unpack

FRAMES, LEVELS, CODES = 5, 3, 8


def _spec(pattern: str) -> ModalitySpec:
    return ModalitySpec("audio", CODES, LEVELS, 0, (FRAMES, 1, 1), pattern=pattern, token_shape=(FRAMES, 1, 1),
                        data_shape=(1, FRAMES * 320), medium="audio")


def _model(pattern: str, seed: int = 0) -> MMAR:
    torch.manual_seed(seed)
    config = MMARConfig(TINY, [_spec(pattern)], {"text": HeadChoice(), "audio": HeadChoice("next_token")})
    return MMAR(config).double().eval()


@pytest.mark.parametrize("pattern, steps", [("flat", FRAMES * LEVELS), ("delay", FRAMES + LEVELS - 1)])
def test_pack_lays_out_the_pattern_and_unpacks_back(pattern, steps):
    model = _model(pattern)
    codes = torch.randint(CODES, (FRAMES, 1, 1, LEVELS), generator=torch.Generator().manual_seed(0))
    batch = pack([[Segment("text", torch.tensor(list(b"a sine"))), Segment("audio", codes)]], model.layout)
    target = batch.targets["audio"].target  # (steps, Q)
    assert target.shape == (steps, LEVELS)
    assert torch.equal(target, patterns.interleave(pattern, codes.view(FRAMES, LEVELS)))
    vectors = batch.vectors["audio"]
    assert torch.equal(batch.targets["audio"].index[1:], vectors.index[:-1])  # step s is predicted before it is seen
    time_axis = batch.positions.view(-1, 3)[vectors.index, 0]  # (steps,)
    assert torch.equal(time_axis.diff(), torch.ones(steps - 1, dtype=time_axis.dtype))  # one time step per pattern step
    assert torch.equal(unpack(batch, model.layout)[0][1].targets, codes)
    outputs = model(batch)
    assert int(outputs["audio"].count) == FRAMES * LEVELS  # holes carry no loss


@pytest.mark.parametrize("pattern", ["flat", "delay"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_generation_cached_equals_recomputed(pattern, guidance):
    model = _model(pattern)
    prompts = [torch.tensor(list(b"a pluck playing E4 once")), torch.tensor(list(b"hi"))]
    config = SamplingConfig(guidance_scale=guidance, seed=3)
    cached = generate(model, prompts, "audio", config)  # (N, T, 1, 1, Q)
    assert cached.shape == (2, FRAMES, 1, 1, LEVELS) and cached.min() >= 0 and cached.max() < CODES
    assert torch.equal(cached, generate(model, prompts, "audio", config, use_cache=False))


@pytest.mark.parametrize("pattern", ["flat", "delay"])
def test_generation_feeds_back_only_what_it_sampled(pattern, monkeypatch):
    """Every row fed to the model is the pattern row just sampled, holes included, in step order; so
    when step s is sampled only rows < s (codes already sampled) have been read."""
    model = _model(pattern)
    fed = []
    embed = model.embed_tokens

    def recording(name, values, scale=None):
        if name == "audio":
            fed.append(values.clone())
        return embed(name, values, scale)

    monkeypatch.setattr(model, "embed_tokens", recording)
    prompts = [torch.tensor(list(b"a square playing C4 rising"))]
    codes = generate(model, prompts, "audio", SamplingConfig(guidance_scale=2.0, seed=1))  # (1, T, 1, 1, Q)
    stepped = patterns.interleave(pattern, codes.view(1, FRAMES, LEVELS))  # (1, steps, Q)
    fed = [rows[:1] for rows in fed]  # (1, Q) each: the conditional half (guidance feeds both halves the same)
    assert len(fed) == stepped.shape[1] - 1  # the last sampled row is never fed
    assert torch.equal(torch.stack(fed, dim=1), stepped[:, :-1])
    holes = patterns.hole_mask(pattern, FRAMES, LEVELS)[:-1]  # (steps - 1, Q)
    assert (torch.stack(fed, dim=1)[0][holes] == patterns.IGNORE).all()
