"""The head contract, run unchanged over every registered head (a new head = one registry line)."""

import pytest
import torch

from heads import HEADS, IGNORE_INDEX, HeadOutput, HeadSpec


def _spec(head_class) -> HeadSpec:
    if head_class.target_dtype.is_floating_point:
        return HeadSpec(dim=16, latent_channels=3)
    return HeadSpec(dim=16, codebook_size=11)


def _targets(head, n: int, generator) -> torch.Tensor:
    if head.target_dtype.is_floating_point:
        return torch.randn(n, *head.target_shape, generator=generator)
    return torch.randint(head.spec.codebook_size, (n, *head.target_shape), generator=generator)


@pytest.fixture(params=sorted(HEADS))
def head(request):
    torch.manual_seed(0)
    cls = HEADS[request.param]
    return cls(cls.Config(), _spec(cls))


def test_loss_returns_summed_loss_and_count(head):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 16, requires_grad=True)
    out = head.loss(hidden, _targets(head, 6, generator), torch.Generator().manual_seed(1))
    assert isinstance(out, HeadOutput)
    assert out.loss_sum.dim() == 0 and torch.isfinite(out.loss_sum) and out.loss_sum > 0
    assert int(out.count) >= 6 and all(v.dim() == 0 for v in out.metrics.values())
    out.loss_sum.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_loss_is_a_sum_over_rows(head):
    """Splitting the rows in two and adding gives the whole: the trainer relies on it for global counts."""
    generator = torch.Generator().manual_seed(0)
    hidden, target = torch.randn(8, 16), _targets(head, 8, generator)
    whole = head.loss(hidden, target, torch.Generator().manual_seed(1))
    halves = [head.loss(hidden[s], target[s], torch.Generator().manual_seed(1)) for s in (slice(0, 4), slice(4, 8))]
    assert int(whole.count) == sum(int(p.count) for p in halves)
    if not head.target_dtype.is_floating_point:  # deterministic loss: the halves add up exactly
        torch.testing.assert_close(whole.loss_sum, halves[0].loss_sum + halves[1].loss_sum)


DISCRETE = sorted(name for name, cls in HEADS.items() if not cls.target_dtype.is_floating_point)


@pytest.mark.parametrize("name", DISCRETE)
def test_ignored_targets_do_not_count(name):
    """Discrete heads only: -100 marks a hole (delay pattern); continuous targets have no holes."""
    head = HEADS[name](HEADS[name].Config(), HeadSpec(dim=16, codebook_size=11))
    target = torch.randint(head.spec.codebook_size, (6, *head.target_shape))
    target[:2] = IGNORE_INDEX
    out = head.loss(torch.randn(6, 16), target)
    assert int(out.count) == 4 * max(1, head.spec.num_codebooks if head.target_shape else 1)


def test_sample_shapes_dtypes_and_seed(head):
    hidden = torch.randn(5, 16)
    first = head.sample(hidden, generator=torch.Generator().manual_seed(0))
    again = head.sample(hidden, generator=torch.Generator().manual_seed(0))
    assert tuple(first.shape) == (5, *head.target_shape) and first.dtype == head.target_dtype
    assert torch.equal(first, again)
    if not head.target_dtype.is_floating_point:
        assert first.min() >= 0 and first.max() < head.spec.codebook_size


def test_guidance_takes_doubled_rows_and_returns_n(head):
    conditional = torch.randn(3, 16)
    hidden = torch.cat([conditional, torch.randn(3, 16)])
    out = head.sample(hidden, guidance_scale=2.5, generator=torch.Generator().manual_seed(0))
    assert tuple(out.shape) == (3, *head.target_shape)
    # With identical halves, guidance changes nothing: the head mixes cond and uncond itself.
    same = head.sample(torch.cat([conditional, conditional]), guidance_scale=2.5, generator=torch.Generator().manual_seed(0))
    plain = head.sample(conditional, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    if head.target_dtype.is_floating_point:
        torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(same, plain)
    with pytest.raises(ValueError):
        head.sample(torch.randn(3, 16), guidance_scale=2.0)


def test_drawn_noise_gives_what_the_generator_gives(head):
    """`sample(noise=draw_noise(...))` draws nothing itself and equals `sample(generator=...)` with the
    same generator state: the compiled decode step relies on it (noise drawn outside, same order)."""
    hidden = torch.cat([torch.randn(4, 16), torch.randn(4, 16)])  # (2N, D): guided
    noise = head.draw_noise(4, torch.Generator().manual_seed(3), hidden.device, hidden.dtype)
    from_noise = head.sample(hidden, guidance_scale=torch.tensor(2.0), noise=noise)  # a tensor scale always guides
    from_generator = head.sample(hidden, guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(from_noise, from_generator)
