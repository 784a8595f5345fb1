"""Causal 3-D convolutions: a video encoder and decoder whose every output sees only past frames.

Ideas (written here from the papers, not copied):

- causal 3-D convolutions, padded only on the past side with the first frame repeated, so the
  first frame is encoded on its own and an image is a one-frame video: MAGVIT-v2 (Yu et al. 2023,
  "Language Model Beats Diffusion - Tokenizer is Key to Visual Generation", arXiv:2310.05737) and
  CogVideoX's 3-D causal VAE (Yang et al. 2024, arXiv:2408.06072);
- the temporal layout 1 + (F - 1) / 4 (first frame alone, later frames x4 in time) and an upsampler
  that keeps the first frame single: the same two papers, and CV-VAE (arXiv:2405.20279);
- the ResNet-block encoder/decoder around them: the VQGAN / LDM autoencoder of `tokenizers_vq.conv`.

Layout inside this module: (B, C, T, H, W). GroupNorm normalises each frame on its own (over C
and H, W only): a norm over time would leak future frames into the past.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizers_vq.conv import group_norm, level_widths


class FrameGroupNorm(nn.Module):
    """GroupNorm per frame: (B, C, T, H, W) -> (B, C, T, H, W), statistics never cross frames."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = rearrange(x, "b c t h w -> (b t) c h w")  # (B*T, C, H, W)
        return rearrange(self.norm(frames), "(b t) c h w -> b c t h w", b=x.shape[0])  # (B, C, T, H, W)


class CausalConv3d(nn.Module):
    """A 3-D convolution padded only on the past side in time (first frame repeated), zero-padded in space.

    (B, C_in, T, H, W) -> (B, C_out, (T - 1) // time_stride + 1, H / space_stride, W / space_stride).
    Output frame j sees input frames j * time_stride - (temporal_kernel - 1) .. j * time_stride:
    never a later one, and output 0 sees frame 0 alone.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int = 3, spatial_kernel: int = 3,
                 time_stride: int = 1, space_stride: int = 1) -> None:
        super().__init__()
        self.time_padding = temporal_kernel - 1
        self.conv = nn.Conv3d(in_channels, out_channels, (temporal_kernel, spatial_kernel, spatial_kernel),
                              stride=(time_stride, space_stride, space_stride),
                              padding=(0, spatial_kernel // 2, spatial_kernel // 2))
        self.inflate_init()

    @torch.no_grad()
    def inflate_init(self) -> None:
        """Start as a per-frame 2-D convolution: the 2-D default init on the newest frame's slice, zeros before it
        (a temporal downsample: the 2-D kernel / kt on every slice, the mean of the frames it merges).

        With PyTorch's default init every one of the kt slices draws an independent kernel, and as
        Adam moves every slice by about the learning rate, the kt slices that see the same (static
        or repeated first) frame move kt times as far as a 2-D kernel: on mostly static clips the
        network trains like a 2-D one at kt times the learning rate and stalls near the mean clip.
        Inflating a 2-D init (I3D, arXiv:1705.07750; MAGVIT-v2's central/last-frame inflation)
        starts it as the image tokenizer, which trains fast, and lets the past slices grow from zero.
        """
        out_channels, in_channels, kernel_t, kernel_h, kernel_w = self.conv.weight.shape
        planar = nn.Conv2d(in_channels, out_channels, (kernel_h, kernel_w))  # the 2-D default init
        self.conv.weight.zero_()
        if self.conv.stride[0] > 1:  # a temporal downsample averages the frames it merges (none is dropped)
            self.conv.weight.copy_(planar.weight.unsqueeze(2).expand_as(self.conv.weight) / kernel_t)
        else:
            self.conv.weight[:, :, -1] = planar.weight  # (C_out, C_in, kh, kw) on the newest frame
        self.conv.bias.copy_(planar.bias)  # (C_out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_padding:
            past = x[:, :, :1].expand(-1, -1, self.time_padding, -1, -1)  # (B, C, kt-1, H, W) first frame repeated
            x = torch.cat([past, x], dim=2)  # (B, C, T + kt - 1, H, W)
        return self.conv(x)  # (B, C_out, T', H', W')


class CausalResnetBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected) skip: (B, C_in, T, H, W) -> (B, C_out, T, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, temporal_kernel)
        self.norm2 = FrameGroupNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, temporal_kernel)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        nn.init.zeros_(self.conv2.conv.weight)  # start as the identity (or the skip), as in conv.ResnetBlock
        nn.init.zeros_(self.conv2.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, T, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, T, H, W)
        return self.skip(x) + h  # (B, C_out, T, H, W)


class CausalUpsample(nn.Module):
    """x2 nearest in space and, if `in_time`, 1 + 2 (T - 1) frames in time, then a causal conv.

    (B, C_in, T, H, W) -> (B, C_out, T' , 2H, 2W). In time every frame but the first is doubled, so
    the first latent frame still makes exactly one output frame (the image path).
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int, in_time: bool) -> None:
        super().__init__()
        self.in_time = in_time
        self.conv = CausalConv3d(in_channels, out_channels, temporal_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_time:
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)  # (B, C, 2T-1, H, W)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T', 2H, 2W)
        return self.conv(x)  # (B, C_out, T', 2H, 2W)


def temporal_levels(num_downsamples: int, num_temporal_downsamples: int) -> list[bool]:
    """Which spatial downsamples (finest first) also halve time: the first `num_temporal_downsamples`."""
    if not 0 <= num_temporal_downsamples <= num_downsamples:
        raise ValueError(f"num_temporal_downsamples must be in 0..num_downsamples={num_downsamples}, "
                         f"got {num_temporal_downsamples}")
    return [level < num_temporal_downsamples for level in range(num_downsamples)]


class CausalEncoder(nn.Module):
    """clips (B, C_in, F, H, W) -> features (B, C_out, 1 + (F - 1) / 2**Dt, H / 2**D, W / 2**D).

    `tokenizers_vq.conv.Encoder` with causal 3-D convolutions: one level per channel multiplier,
    `num_res_blocks` blocks per level, a strided downsample between levels (D = levels - 1), the
    first `num_temporal_downsamples` (Dt) of which also stride 2 in time.
    """

    def __init__(self, in_channels: int, base_channels: int, channel_multipliers: tuple[int, ...],
                 num_res_blocks: int, out_channels: int, num_temporal_downsamples: int, temporal_kernel: int) -> None:
        super().__init__()
        widths = level_widths(base_channels, channel_multipliers)
        in_time = temporal_levels(len(widths) - 1, num_temporal_downsamples)
        self.conv_in = CausalConv3d(in_channels, widths[0], temporal_kernel)
        blocks: list[nn.Module] = []
        current = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(CausalResnetBlock(current, width, temporal_kernel))
                current = width
            if level < len(widths) - 1:
                blocks.append(CausalConv3d(current, current, temporal_kernel, time_stride=2 if in_time[level] else 1,
                                           space_stride=2))
        blocks.append(CausalResnetBlock(current, current, temporal_kernel))  # middle block
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(current)
        self.conv_out = CausalConv3d(current, out_channels, temporal_kernel)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(clips)  # (B, widths[0], F, H, W)
        h = self.blocks(h)  # (B, widths[-1], t, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, t, h, w)


class CausalDecoder(nn.Module):
    """features (B, C_in, t, h, w) -> clips (B, C_out, 1 + (t - 1) * 2**Dt, h * 2**D, w * 2**D), unclamped.

    The mirror of `CausalEncoder`: the coarsest levels upsample in time last-first, so the level that
    halved time in the encoder doubles it here.
    """

    def __init__(self, in_channels: int, base_channels: int, channel_multipliers: tuple[int, ...],
                 num_res_blocks: int, out_channels: int, num_temporal_downsamples: int, temporal_kernel: int) -> None:
        super().__init__()
        widths = level_widths(base_channels, channel_multipliers)
        in_time = temporal_levels(len(widths) - 1, num_temporal_downsamples)
        current = widths[-1]
        self.conv_in = CausalConv3d(in_channels, current, temporal_kernel)
        blocks: list[nn.Module] = [CausalResnetBlock(current, current, temporal_kernel)]  # middle block
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                blocks.append(CausalResnetBlock(current, widths[level], temporal_kernel))
                current = widths[level]
            if level > 0:
                blocks.append(CausalUpsample(current, widths[level - 1], temporal_kernel, in_time[level - 1]))
                current = widths[level - 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(current)
        self.conv_out = CausalConv3d(current, out_channels, temporal_kernel)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(features)  # (B, widths[-1], t, h, w)
        h = self.blocks(h)  # (B, widths[0], F, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, F, H, W)
