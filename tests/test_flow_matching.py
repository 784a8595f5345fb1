"""Flow-matching head: the ODE steppers against analytic velocity fields and diffusers' scheduler,
a tiny trained head, and classifier-free guidance with shared noise.

Analytic field: with x_sigma = (1 - sigma) x0 + sigma eps, eps ~ N(0, 1) and x0 ~ N(mu, s^2), x_sigma
is Gaussian with mean (1 - sigma) mu and variance V = (1 - sigma)^2 s^2 + sigma^2, and
E[v | x] = E[eps - x0 | x] = -mu + (sigma - (1 - sigma) s^2) / V * (x - (1 - sigma) mu).
For a mixture, the component fields are weighted by their posterior probabilities at x.
The exact flow keeps every quantile, so noise z ends at exactly mu + s z.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from heads import HEADS, HeadSpec
from heads.flow_matching import (
    FlowMatchingConfig,
    FlowMatching,
    euler_step,
    heun_step,
    integrate,
    sigma_schedule,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and the CPU is shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_velocity(mu: float, s: float):
    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        variance = (1 - sigma) ** 2 * s**2 + sigma**2
        return -mu + (sigma - (1 - sigma) * s**2) / variance * (x - (1 - sigma) * mu)

    return velocity


def mixture_velocity(weights, means, stds):
    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        log_posteriors, fields = [], []
        for weight, mu, s in zip(weights, means, stds):
            variance = (1 - sigma) ** 2 * s**2 + sigma**2
            centred = x - (1 - sigma) * mu
            log_posteriors.append(math.log(weight) - 0.5 * math.log(variance) - 0.5 * centred**2 / variance)
            fields.append(-mu + (sigma - (1 - sigma) * s**2) / variance * centred)
        posterior = torch.stack(log_posteriors).softmax(dim=0)  # (K, N, 1)
        return (posterior * torch.stack(fields)).sum(dim=0)  # (N, 1)

    return velocity


@pytest.mark.parametrize("sampler, num_steps, shift", [("euler", 200, 1.0), ("heun", 20, 1.0), ("heun", 20, 3.0)])
def test_sampler_reaches_analytic_gaussian(sampler, num_steps, shift):
    mu, s = 1.5, 0.5
    noise = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (N, 1)
    sigmas = sigma_schedule(num_steps, shift).double()  # (S+1,)
    x = integrate(gaussian_velocity(mu, s), noise, sigmas, sampler)  # (N, 1)
    # The exact flow maps z to mu + s z; the distribution follows.
    assert (x - (mu + s * noise)).abs().max() < (0.03 if sampler == "euler" else 0.01)
    assert abs(x.mean().item() - mu) < 0.02
    assert abs(x.std().item() - s) < 0.02


def test_euler_many_steps_agrees_with_heun_few_steps():
    velocity = mixture_velocity([0.3, 0.7], [-2.0, 1.0], [0.3, 0.5])
    noise = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]  # (N, 1)
    euler = integrate(velocity, noise, sigma_schedule(4000).double(), "euler")  # (N, 1)
    heun = integrate(velocity, noise, sigma_schedule(40).double(), "heun")  # (N, 1)
    coarse_euler = integrate(velocity, noise, sigma_schedule(40).double(), "euler")  # (N, 1)
    assert (euler - heun).abs().max() < 1e-2
    # Second order pays off: at equal steps Heun is much closer to the fine solution than Euler.
    assert (euler - heun).abs().mean() < 0.2 * (euler - coarse_euler).abs().mean()
    # Both modes are reached: the end points split around the mixture's components.
    assert (heun < -1).float().mean().item() > 0.1 and (heun > 0).float().mean().item() > 0.5


def test_steps_are_pure_functions_of_their_inputs():
    velocity = gaussian_velocity(1.0, 0.5)
    x = torch.tensor([[0.5], [-1.0]])  # (2, 1)
    assert torch.allclose(euler_step(velocity, x, 0.8, 0.6), x + (0.6 - 0.8) * velocity(x, 0.8))
    predicted = x + (0.6 - 0.8) * velocity(x, 0.8)  # (2, 1)
    expected = x + (0.6 - 0.8) * 0.5 * (velocity(x, 0.8) + velocity(predicted, 0.6))  # (2, 1)
    assert torch.allclose(heun_step(velocity, x, 0.8, 0.6), expected)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_matches_diffusers_flow_match_scheduler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    num_steps = 12
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist())
    ours = sigma_schedule(num_steps, shift)  # (S+1,)
    assert torch.allclose(scheduler.sigmas, ours, atol=1e-6)

    velocity = mixture_velocity([0.5, 0.5], [-1.0, 2.0], [0.4, 0.6])
    start = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))  # (N, 1)
    x_diffusers, x_ours = start.clone(), start.clone()
    values = ours.tolist()
    for index, timestep in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[index])
        x_diffusers = scheduler.step(velocity(x_diffusers, sigma), timestep, x_diffusers).prev_sample  # (N, 1)
        x_ours = euler_step(velocity, x_ours, values[index], values[index + 1])  # (N, 1)
        assert torch.allclose(x_diffusers, x_ours, atol=1e-5), f"trajectories differ at step {index}"


def tiny_head(latent_channels: int = 2, dim: int = 8, **config) -> FlowMatching:
    torch.manual_seed(0)
    settings = {"width": 64, "num_layers": 2, **config}
    return FlowMatching(FlowMatchingConfig(**settings), HeadSpec(dim=dim, latent_channels=latent_channels))


def test_head_contract_basics():
    assert HEADS["flow_matching"] is FlowMatching
    head = tiny_head()
    assert head.target_shape == (2,) and head.target_dtype == torch.float
    hidden, target = torch.randn(5, 8), torch.randn(5, 2)  # (N, D), (N, C)
    first = head.loss(hidden, target, generator=torch.Generator().manual_seed(3))
    again = head.loss(hidden, target, generator=torch.Generator().manual_seed(3))
    assert first.count.item() == 5 and first.loss_sum.shape == () and set(first.metrics) == {"velocity_mse"}
    assert torch.equal(first.loss_sum, again.loss_sum)  # all randomness comes from the generator
    # The untrained net predicts v ~ 0, so the loss is about E|eps - x0|^2 = 2 per target.
    assert 0.5 * 5 * 2 < first.loss_sum.item() < 5 * 5 * 2
    drawn = head.sample(hidden, generator=torch.Generator().manual_seed(0), num_steps=3, sampler="heun")
    assert drawn.shape == (5, 2) and drawn.dtype == torch.float
    with pytest.raises(ValueError):
        head.sample(hidden, sampler="rk4")


def test_tiny_head_learns_a_conditional_toy_problem():
    num_classes, dim = 4, 8
    embeddings = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))  # (K, D)
    centres = torch.tensor([[1.5, 1.5], [-1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]])  # (K, C)
    head = tiny_head(num_repeats=4)
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(400):
        labels = torch.randint(num_classes, (64,), generator=generator)  # (B,)
        target = centres[labels] + 0.1 * torch.randn(64, 2, generator=generator)  # (B, C)
        output = head.loss(embeddings[labels], target, generator=generator)
        optimizer.zero_grad()
        (output.loss_sum / output.count).backward()
        optimizer.step()
        losses.append(output.loss_sum.item() / output.count.item())
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:20]) / 20

    labels = torch.arange(num_classes).repeat_interleave(200)  # (800,)
    drawn = head.sample(embeddings[labels], generator=torch.Generator().manual_seed(2), sampler="heun", num_steps=10)
    distance = (drawn - centres[labels]).norm(dim=-1)  # (800,)
    assert distance.median().item() < 0.3
    for label in range(num_classes):
        assert (drawn[labels == label].mean(dim=0) - centres[label]).norm().item() < 0.3


def test_guidance_mixes_velocity_with_shared_noise():
    head = tiny_head(latent_channels=3, dim=6, num_steps=4)
    # Make the untrained net depend strongly on its condition (its blocks start as the identity).
    torch.nn.init.normal_(head.net.output_proj.weight, std=0.3)
    for block in head.net.blocks:
        torch.nn.init.normal_(block.modulation[-1].weight, std=0.3)
    conditional, unconditional = torch.randn(5, 6), torch.randn(5, 6)  # (N, D) each

    def draw(hidden, scale):
        return head.sample(hidden, guidance_scale=scale, generator=torch.Generator().manual_seed(7))

    plain = draw(conditional, 1.0)  # (N, C)
    # cond == uncond: guidance cannot change anything, whatever the scale (the noise is shared).
    doubled = torch.cat([conditional, conditional])  # (2N, D)
    for scale in (0.0, 2.0, 5.0):
        assert torch.allclose(draw(doubled, scale), plain, atol=1e-5)
    # Scale 0 is the unconditional branch alone: rows [N:] are the unconditional ones.
    both = torch.cat([conditional, unconditional])  # (2N, D)
    assert torch.allclose(draw(both, 0.0), draw(unconditional, 1.0), atol=1e-5)
    # And a real scale moves the sample away from both.
    guided = draw(both, 3.0)  # (N, C)
    assert not torch.allclose(guided, plain, atol=1e-3)
    with pytest.raises(ValueError):
        draw(torch.randn(5, 6), 2.0)  # odd number of rows cannot hold cond + uncond halves


def test_temperature_zero_is_deterministic_and_ignores_top_k_top_p():
    head = tiny_head(num_steps=3)
    torch.nn.init.normal_(head.net.output_proj.weight, std=0.3)
    hidden = torch.randn(4, 8)  # (N, D)
    a = head.sample(hidden, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = head.sample(hidden, temperature=0.0, top_k=5, top_p=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
