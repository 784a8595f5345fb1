"""The sampling helpers every discrete head uses: the draw follows the distribution, top-k / top-p
keep exactly the tokens they should, zero-probability tokens are never drawn, seeds reproduce."""

import pytest
import torch

from heads.sampling import mix_guidance, sample_logits, split_guidance

DRAWS = 40_000


def _frequencies(logits: torch.Tensor, **options) -> torch.Tensor:
    rows = logits.expand(DRAWS, -1)  # (DRAWS, V): one draw per row
    draws = sample_logits(rows, generator=torch.Generator().manual_seed(0), **options)  # (DRAWS,)
    return torch.bincount(draws, minlength=logits.shape[-1]).float() / DRAWS


def test_draws_follow_the_softmax():
    probs = torch.tensor([0.05, 0.4, 0.0, 0.25, 0.3, 0.0])
    frequencies = _frequencies(probs.log()[None])
    # 4 standard deviations of a binomial frequency at p = 0.5: 0.01 for 40k draws.
    assert torch.allclose(frequencies, probs, atol=0.01), frequencies
    assert frequencies[2] == 0 and frequencies[5] == 0  # zero-probability tokens, in the middle and last


def test_zero_probability_first_and_last_tokens_are_never_drawn():
    logits = torch.full((1, 64), float("-inf"))
    logits[0, 31] = 0.0  # a single allowed token: every draw must be it
    assert torch.equal(_frequencies(logits).nonzero().flatten(), torch.tensor([31]))


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold, hot = _frequencies(logits, temperature=0.5), _frequencies(logits, temperature=4.0)
    assert torch.allclose(cold, (logits / 0.5).softmax(-1)[0], atol=0.01)
    assert torch.allclose(hot, (logits / 4.0).softmax(-1)[0], atol=0.01)
    assert torch.equal(sample_logits(logits, temperature=0.0), torch.tensor([0]))  # greedy


def test_top_k_and_top_p_keep_exactly_the_head_of_the_distribution():
    probs = torch.tensor([0.1, 0.35, 0.05, 0.3, 0.2])
    logits = probs.log()[None]
    top2 = _frequencies(logits, top_k=2)
    assert set(top2.nonzero().flatten().tolist()) == {1, 3}
    assert torch.allclose(top2[[1, 3]], torch.tensor([0.35, 0.3]) / 0.65, atol=0.01)
    # Sorted mass 0.35, 0.65, 0.85: top_p 0.6 keeps 2 tokens (0.35 < 0.6, 0.65 >= 0.6 stops after it).
    assert set(_frequencies(logits, top_p=0.6).nonzero().flatten().tolist()) == {1, 3}
    assert set(_frequencies(logits, top_p=0.3).nonzero().flatten().tolist()) == {1}  # the top token always stays


def test_same_generator_seed_same_draws_and_batch_shape_kept():
    logits = torch.randn(4, 3, 50)
    a = sample_logits(logits, generator=torch.Generator().manual_seed(7))
    b = sample_logits(logits, generator=torch.Generator().manual_seed(7))
    c = sample_logits(logits, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, 3) and a.dtype == torch.long and torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_split_and_mix():
    hidden = torch.arange(8.0).view(4, 2)
    conditional, unconditional = split_guidance(hidden, 3.0)
    assert torch.equal(conditional, hidden[:2]) and torch.equal(unconditional, hidden[2:])
    assert torch.equal(mix_guidance(conditional, unconditional, 3.0), hidden[2:] + 3 * (hidden[:2] - hidden[2:]))
    assert split_guidance(hidden, 1.0) == (hidden, None)
    with pytest.raises(ValueError, match="cond rows then uncond"):
        split_guidance(hidden[:3], 2.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(hidden, temperature=-1.0)


def test_plausibility_keeps_guidance_off_codes_the_prompt_finds_unlikely():
    from heads.sampling import mix_guidance, restrict_to_plausible

    # code 0 is the prompt's choice; code 2 is unlikely under the prompt but far more unlikely without it
    conditional = torch.tensor([[0.0, -1.0, -10.0]]).log_softmax(-1)  # (1, 3)
    unconditional = torch.tensor([[0.0, -1.0, -25.0]]).log_softmax(-1)
    guided = mix_guidance(conditional, unconditional, 3.0)
    assert guided.argmax(-1).item() == 2  # the tail code wins plain guidance
    restricted = restrict_to_plausible(guided, conditional, 0.05)
    assert restricted.argmax(-1).item() == 0 and torch.isinf(restricted[0, 2])
    assert torch.isfinite(restricted[0, :2]).all()  # codes within 5% of the top stay (e^-1 = 37%)
    assert torch.equal(restrict_to_plausible(guided, conditional, 0.0), guided)  # 0 is off
