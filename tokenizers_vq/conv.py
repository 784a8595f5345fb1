"""Small convolutional image encoder and decoder shared by the image tokenizers.

The layout is the VQGAN / latent-diffusion autoencoder (Esser et al. 2021, "Taming Transformers
for High-Resolution Image Synthesis", arXiv:2012.09841; Rombach et al. 2022, arXiv:2112.10752),
trimmed for 32x32 images on a CPU: ResNet blocks with GroupNorm and SiLU, strided-convolution
downsampling, nearest-neighbour upsampling, and no attention (an 8x8 latent does not need it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with about 4+ channels per group (32 groups at 128 channels, 8 at 32)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 4 or g == 1)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv, twice, plus a (1x1-projected) skip: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        # Start as the identity (or the skip projection): deep stacks train faster from there.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        return self.skip(x) + h  # (B, C_out, H, W)


class Downsample(nn.Module):
    """Strided 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C_in, 2H, 2W)
        return self.conv(x)  # (B, C_out, 2H, 2W)


def level_widths(base_channels: int, channel_multipliers: tuple[int, ...]) -> list[int]:
    """Channels at each resolution level, finest first."""
    if base_channels < 1 or not channel_multipliers or min(channel_multipliers) < 1:
        raise ValueError(f"need base_channels >= 1 and positive channel_multipliers, got "
                         f"{base_channels} and {channel_multipliers}")
    return [base_channels * multiplier for multiplier in channel_multipliers]


class Encoder(nn.Module):
    """images (B, in_channels, H, W) -> features (B, out_channels, H / 2**D, W / 2**D).

    One resolution level per entry of `channel_multipliers` (width `base_channels * multiplier`),
    `num_res_blocks` ResNet blocks per level, a downsample between levels (so D =
    len(channel_multipliers) - 1), a middle block, then norm -> SiLU -> conv out.
    """

    def __init__(self, in_channels: int, base_channels: int, channel_multipliers: tuple[int, ...],
                 num_res_blocks: int, out_channels: int) -> None:
        super().__init__()
        widths = level_widths(base_channels, channel_multipliers)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        current = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(current, width))
                current = width
            if level < len(widths) - 1:
                blocks.append(Downsample(current))
        blocks.append(ResnetBlock(current, current))  # middle block at the latent resolution
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = group_norm(current)
        self.conv_out = nn.Conv2d(current, out_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(images)  # (B, widths[0], H, W)
        h = self.blocks(h)  # (B, widths[-1], H / 2**D, W / 2**D)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H / 2**D, W / 2**D)


class Decoder(nn.Module):
    """features (B, in_channels, h, w) -> images (B, out_channels, h * 2**D, w * 2**D), unclamped.

    The mirror of `Encoder`: conv in, a middle block, then the levels coarsest first, each with
    `num_res_blocks` ResNet blocks and an upsample (which also narrows to the next level's width).
    """

    def __init__(self, in_channels: int, base_channels: int, channel_multipliers: tuple[int, ...],
                 num_res_blocks: int, out_channels: int) -> None:
        super().__init__()
        widths = level_widths(base_channels, channel_multipliers)
        current = widths[-1]
        self.conv_in = nn.Conv2d(in_channels, current, 3, padding=1)
        blocks: list[nn.Module] = [ResnetBlock(current, current)]  # middle block
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(current, widths[level]))
                current = widths[level]
            if level > 0:
                # Narrow while upsampling so the finest level's convolutions stay cheap.
                blocks.append(Upsample(current, widths[level - 1]))
                current = widths[level - 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = group_norm(current)
        self.conv_out = nn.Conv2d(current, out_channels, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(features)  # (B, widths[-1], h, w)
        h = self.blocks(h)  # (B, widths[0], h * 2**D, w * 2**D)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, h * 2**D, w * 2**D)


def reconstruction_loss(kind: str, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean absolute ("l1") or squared ("mse") error: ()."""
    return F.l1_loss(reconstruction, images) if kind == "l1" else F.mse_loss(reconstruction, images)


def reconstruction_metrics(reconstruction: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE and PSNR of a reconstruction clamped to [-1, 1] against images in [-1, 1] (peak-to-peak 2).

    PSNR = 10 log10(2**2 / MSE), which equals the usual PSNR on images mapped to [0, 1].
    Returns 0-dim detached tensors, so a caller converts them to floats with one host sync.
    """
    mse = F.mse_loss(reconstruction.detach().clamp(-1, 1), images)  # ()
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # ()
    return {"mse": mse, "psnr": psnr}


def check_images(images: torch.Tensor, channels: int, factor: int) -> None:
    """A clear ValueError unless `images` is (B, channels, H, W) float with H, W divisible by `factor`."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != channels:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (B, {channels}, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype}")
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ValueError(f"image size {tuple(images.shape[2:])} is not divisible by the downsampling "
                         f"factor {factor}")
