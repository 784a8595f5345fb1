"""Flow-matching head: a small per-token velocity network over continuous latents.

Each position's hidden state conditions a residual MLP with adaptive LayerNorm that predicts the
flow velocity of that position's latent vector; sampling integrates the ODE from noise to data,
one solve per position, with classifier-free guidance mixed on the velocity at every step.

Ideas and where they come from (the code is written here):
- per-token diffusion/flow head with an adaLN residual MLP, and repeating each hidden state several
  times per step for a lower-variance loss: MAR, Li et al. 2024, "Autoregressive Image Generation
  without Vector Quantization", arXiv:2406.11838 (its `DiffLoss` / `SimpleMLPAdaLN`);
- the same head trained with flow matching on continuous image tokens: NextStep-1, StepFun 2025,
  arXiv:2508.10711;
- flow matching / rectified flow: Lipman et al. 2022 (arXiv:2210.02747), Liu et al. 2022
  (arXiv:2209.03003);
- logit-normal timestep sampling and the timestep shift sigma' = s*sigma / (1 + (s-1)*sigma):
  Esser et al. 2024 (SD3), arXiv:2403.03206;
- Heun's second-order sampler for probability-flow ODEs: Karras et al. 2022 (EDM), arXiv:2206.00364.

Flow convention (diffusers'): sigma = 1 is pure noise, x_sigma = (1 - sigma) x0 + sigma eps, and
the network predicts the velocity v = eps - x0, so dx/dsigma = v and sampling runs sigma 1 -> 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange, repeat
from torch import nn

from heads.base import Head, HeadOutput, HeadSpec
from heads.sampling import mix_guidance, split_guidance

#: velocity_fn(x (N, C), sigma) -> velocity (N, C); sigma is a Python float, the same for every row.
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]

SAMPLERS = ("euler", "heun")


# --- the ODE, as small pure functions ------------------------------------------------------------
def shift_sigmas(sigmas: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """SD3's timestep shift: sigma' = shift*sigma / (1 + (shift-1)*sigma); shift > 1 spends more steps near noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)  # same shape as sigmas


def sigma_values(num_steps: int, shift: float = 1.0) -> list[float]:
    """num_steps + 1 sigmas from 1 down to 0 as host floats: uniform in sigma, then shifted.

    Plain Python, no tensors: the compiled decode step unrolls the ODE over these constants
    without a device round trip.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return [shift_sigmas(1.0 - index / num_steps, shift) for index in range(num_steps + 1)]


def sigma_schedule(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """(num_steps + 1,) float32 sigmas from 1 down to 0: `sigma_values` as a tensor.

    Matches diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` given the unshifted sigmas
    `linspace(1, 0, num_steps + 1)[:-1]` (it appends the final 0 itself).
    """
    return torch.tensor(sigma_values(num_steps, shift), dtype=torch.float64).float()  # (S+1,)


def euler_step(velocity_fn: VelocityFn, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One explicit Euler step of dx/dsigma = v from sigma to sigma_next: x (N, C) -> (N, C)."""
    return x + (sigma_next - sigma) * velocity_fn(x, sigma)  # (N, C)


def heun_step(velocity_fn: VelocityFn, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Heun step (Euler predictor, trapezoidal corrector): x (N, C) -> (N, C), two velocity calls.

    Unlike EDM's sampler the corrector also runs on the last step (into sigma = 0): the flow
    velocity is well defined there (v = -x0 + E[eps | x0] = -x), so every step stays second order.
    """
    velocity = velocity_fn(x, sigma)  # (N, C)
    predicted = x + (sigma_next - sigma) * velocity  # (N, C)
    velocity_next = velocity_fn(predicted, sigma_next)  # (N, C)
    return x + (sigma_next - sigma) * 0.5 * (velocity + velocity_next)  # (N, C)


def integrate(
    velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor | list[float], sampler: str = "euler"
) -> torch.Tensor:
    """Solve the flow ODE along `sigmas` (S+1,), decreasing, from x = noise (N, C) -> x at sigmas[-1] (N, C).

    Host floats (`sigma_values`) keep the loop free of device syncs; a tensor is read back once."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
    step = euler_step if sampler == "euler" else heun_step
    values = sigmas.tolist() if torch.is_tensor(sigmas) else list(sigmas)
    x = noise
    for sigma, sigma_next in zip(values[:-1], values[1:]):
        x = step(velocity_fn, x, sigma, sigma_next)  # (N, C)
    return x


def logit_normal_sigmas(num: int, mean: float, std: float, *, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SD3's logit-normal timesteps: sigmoid(mean + std * n), n ~ N(0, 1) -> (num,) in (0, 1)."""
    normal = torch.randn(num, generator=generator, device=device, dtype=dtype)  # (num,)
    return torch.sigmoid(mean + std * normal)  # (num,)


def state_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Dtype for ODE states, noise and losses: float32, or float64 when the input is float64."""
    return torch.promote_types(tensor.dtype, torch.float32)


# --- the velocity network (MAR's SimpleMLPAdaLN, written afresh) --------------------------------
def timestep_embedding(sigma: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of sigma (N,) in [0, 1] (scaled to 0..1000 like diffusers' timesteps) -> (N, dim)."""
    half, dtype = dim // 2, state_dtype(sigma)
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=dtype, device=sigma.device) / half
    )  # (dim/2,)
    angles = (sigma.to(dtype) * 1000.0)[:, None] * frequencies[None]  # (N, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (N, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x (N, W) * (1 + scale) + shift -> (N, W)."""
    return x * (1 + scale) + shift  # (N, W)


class ResidualBlock(nn.Module):
    """LayerNorm -> adaLN (shift, scale) -> MLP -> gated residual, conditioned on c (N, W)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x (N, W), condition (N, W) -> (N, W)."""
        shift, scale, gate = self.modulation(condition).chunk(3, dim=-1)  # (N, W) each
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))  # (N, W)


class VelocityNet(nn.Module):
    """v(x_sigma, sigma, hidden): input projection, `num_layers` adaLN residual blocks, adaLN output layer.

    The condition of every block is embed(sigma) + project(hidden). The blocks' modulations start at
    zero (adaLN-Zero, DiT / MAR), so each block starts as the identity; the output layer starts small,
    so the untrained net predicts v ~ 0.
    """

    def __init__(self, channels: int, dim: int, width: int, num_layers: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.input_proj = nn.Linear(channels, width)
        self.time_embed = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.condition_proj = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output_proj = nn.Linear(width, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        # Unlike DiT / MAR the output layer is not zeroed: a zero layer would block the gradient to
        # `hidden` at step 0, and the transformer must learn from the first step. A small init keeps
        # the initial velocity near 0 all the same.
        nn.init.normal_(self.output_proj.weight, std=0.02)

    def embed_condition(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, D) -> (N, W); computed once per sample and reused at every ODE step."""
        return self.condition_proj(hidden)  # (N, W)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x (N, C), sigma (N,), condition (N, W) from `embed_condition` -> velocity (N, C)."""
        time = self.time_embed(timestep_embedding(sigma, self.frequency_dim).to(condition.dtype))  # (N, W)
        condition = condition + time  # (N, W)
        h = self.input_proj(x.to(condition.dtype))  # (N, W)
        for block in self.blocks:
            h = block(h, condition)  # (N, W)
        shift, scale = self.final_modulation(condition).chunk(2, dim=-1)  # (N, W) each
        return self.output_proj(modulate(self.final_norm(h), shift, scale))  # (N, C)


# --- the head --------------------------------------------------------------------------------------
@dataclass
class FlowMatchingConfig:
    width: int = 256  # W of the velocity MLP
    num_layers: int = 3  # adaLN residual blocks (MAR uses 3 for its small models)
    num_repeats: int = 4  # noise draws per hidden state per training step (MAR's diffusion_batch_mul)
    timestep_mean: float = 0.0  # logit-normal training timesteps: sigma = sigmoid(mean + std * n)
    timestep_std: float = 1.0
    sampler: str = "euler"  # "euler" | "heun"
    num_steps: int = 25  # ODE steps when sampling (Heun costs two velocity calls per step)
    shift: float = 1.0  # sampling-schedule shift (SD3); 1 = uniform in sigma


class FlowMatching(Head):
    """Per-position flow matching over continuous latents (MAR / NextStep-1).

    `loss(hidden (N, D), target (N, C))` is the mean-squared velocity error per target, averaged over
    `num_repeats` noise draws and the C channels, summed over the N targets (count = N).
    `sample(hidden)` integrates from sigma = 1 (noise * temperature) to 0 -> (N, C).
    """

    Config = FlowMatchingConfig
    target_dtype = torch.float
    token_kinds = ("vectors",)

    def __init__(self, config: FlowMatchingConfig, spec: HeadSpec) -> None:
        super().__init__(config, spec)
        if spec.latent_channels < 1:
            raise ValueError(f"{type(self).__name__} needs continuous latents (latent_channels >= 1), got {spec}")
        if config.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {config.sampler!r}; known: {SAMPLERS}")
        if config.num_repeats < 1 or config.num_steps < 1 or config.num_layers < 0:
            raise ValueError(f"num_repeats and num_steps must be >= 1 and num_layers >= 0, got {config}")
        self.net = VelocityNet(spec.latent_channels, spec.dim, config.width, config.num_layers)

    @property
    def target_shape(self) -> tuple[int, ...]:
        return (self.spec.latent_channels,)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Predicted velocity: x (N, C), sigma (N,), hidden (N, D) -> (N, C) in x's dtype."""
        return self.net(x, sigma, self.net.embed_condition(hidden)).to(x.dtype)  # (N, C)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> HeadOutput:
        """hidden (N, D), target (N, C) float -> HeadOutput(sum of per-target velocity MSE, N, metrics).

        Timesteps and noise come from `generator` when given (resume-exact training), else the global RNG.
        """
        num_targets, repeats = target.shape[0], self.config.num_repeats
        x0 = repeat(target.to(state_dtype(hidden)), "n c -> (r n) c", r=repeats)  # (R*N, C)
        condition = repeat(hidden, "n d -> (r n) d", r=repeats)  # (R*N, D)
        sigma = logit_normal_sigmas(
            x0.shape[0], self.config.timestep_mean, self.config.timestep_std,
            generator=generator, device=x0.device, dtype=x0.dtype,
        )  # (R*N,)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (R*N, C)
        x_sigma = (1 - sigma[:, None]) * x0 + sigma[:, None] * noise  # (R*N, C)
        predicted = self.velocity(x_sigma, sigma, condition)  # (R*N, C)
        error = (predicted - (noise - x0)).pow(2).mean(dim=-1)  # (R*N,)
        per_target = rearrange(error, "(r n) -> r n", r=repeats).mean(dim=0)  # (N,)
        loss_sum = per_target.sum()  # ()
        count = torch.tensor(num_targets, dtype=torch.long, device=target.device)  # ()
        return HeadOutput(loss_sum, count, {"velocity_mse": loss_sum.detach()})

    @torch.no_grad()
    def sample(
        self,
        hidden: torch.Tensor,
        *,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        shift: float | None = None,
        **options,
    ) -> torch.Tensor:
        """hidden (N, D), or (2N, D) with guidance (rows [:N] conditional) -> latents (N, C).

        The ODE runs (and the result comes back) in float32, or in float64 when `hidden` is float64.

        `temperature` scales the starting noise (0 gives the deterministic flow from x = 0).
        `num_steps`, `sampler` ("euler" | "heun") and `shift` override the config for this call.
        With `guidance_scale != 1` both halves start from the SAME noise and the velocity is mixed
        as u + s * (c - u) at every ODE step. `top_k` / `top_p` have no meaning for a continuous
        head and are ignored, as are other heads' `options`, so `generate` can call every head alike.
        `noise` (N, C): the starting noise from `draw_noise` (else drawn here from `generator`).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        conditional, unconditional = split_guidance(hidden, guidance_scale)  # (N, D) each
        num_rows = conditional.shape[0]
        both = hidden if unconditional is not None else conditional  # (2N or N, D)
        condition = self.net.embed_condition(both)  # (2N or N, W)
        sigmas = sigma_values(
            self.config.num_steps if num_steps is None else num_steps, self.config.shift if shift is None else shift
        )  # S+1 host floats

        def velocity_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
            inputs = x if unconditional is None else torch.cat([x, x], dim=0)  # (2N or N, C): shared noise
            sigma_rows = torch.full((inputs.shape[0],), sigma, device=x.device, dtype=x.dtype)  # (2N or N,)
            velocity = self.net(inputs, sigma_rows, condition).to(x.dtype)  # (2N or N, C)
            if unconditional is None:
                return velocity
            velocity_conditional, velocity_unconditional = velocity.chunk(2, dim=0)  # (N, C) each
            return mix_guidance(velocity_conditional, velocity_unconditional, guidance_scale)  # (N, C)

        if noise is None:
            noise = self.draw_noise(num_rows, generator, hidden.device, hidden.dtype)  # (N, C)
        return integrate(velocity_fn, noise * temperature, sigmas, sampler or self.config.sampler)  # (N, C)

    def draw_noise(self, num_rows, generator, device, dtype):
        """The ODE's starting noise, (N, C) standard normal in the state dtype (float32 or float64)."""
        return torch.randn((num_rows, self.spec.latent_channels), generator=generator, device=device,
                           dtype=torch.promote_types(dtype, torch.float32))  # (N, C)
