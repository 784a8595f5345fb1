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
from einops import rearrange, reduce
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


class TimeToChannel(nn.Module):
    """Fold each group of `factor` frames into channels, causally: (B, C, 1 + factor k, H, W) -> (B, C, 1 + k, H, W).

    Frame 0 forms group 0 on its own (repeated), frames factor (j - 1) + 1 .. factor j form group j,
    so group j never sees a later frame. Out = a 1x1x1 projection of the folded (factor C) channels
    plus the mean of the group's frames: DC-AE's residual autoencoding (Chen et al. 2024,
    arXiv:2410.10733), space-to-channel with a non-parametric shortcut, applied to time. Unlike a
    strided temporal convolution, whose averaging start throws away the motion inside a group, the
    projection reads every frame of the group from the first step.
    """

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Conv3d(factor * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, :, :1].expand(-1, -1, self.factor - 1, -1, -1)  # (B, C, factor-1, H, W)
        x = torch.cat([first, x], dim=2)  # (B, C, factor (1 + k), H, W)
        folded = rearrange(x, "b c (t f) h w -> b (f c) t h w", f=self.factor)  # (B, factor C, 1 + k, H, W)
        shortcut = reduce(x, "b c (t f) h w -> b c t h w", "mean", f=self.factor)  # (B, C, 1 + k, H, W)
        return self.proj(folded) + shortcut  # (B, C, 1 + k, H, W)


class ChannelToTime(nn.Module):
    """The inverse fold: (B, C, 1 + k, H, W) -> (B, C, 1 + factor k, H, W); group j makes frames of group j only.

    A 1x1x1 projection to factor C channels, unfolded into `factor` frames, plus each group's input
    repeated over its frames (DC-AE's channel-to-space shortcut, in time); group 0 keeps one frame.
    """

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Conv3d(channels, factor * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = rearrange(self.proj(x), "b (f c) t h w -> b c (t f) h w", f=self.factor)  # (B, C, factor (1+k), H, W)
        frames = frames + x.repeat_interleave(self.factor, dim=2)  # (B, C, factor (1 + k), H, W)
        return frames[:, :, self.factor - 1:]  # (B, C, 1 + factor k, H, W) group 0 is frame 0 alone


def temporal_levels(num_downsamples: int, num_temporal_downsamples: int) -> list[bool]:
    """Which spatial downsamples (finest first) also halve time: the first `num_temporal_downsamples`."""
    if not 0 <= num_temporal_downsamples <= num_downsamples:
        raise ValueError(f"num_temporal_downsamples must be in 0..num_downsamples={num_downsamples}, "
                         f"got {num_temporal_downsamples}")
    return [level < num_temporal_downsamples for level in range(num_downsamples)]


class CausalEncoder(nn.Module):
    """clips (B, C_in, F, H, W) -> features (B, C_out, 1 + (F - 1) / 2**Dt, H / 2**D, W / 2**D).

    `tokenizers_vq.conv.Encoder` with causal 3-D convolutions: one level per channel multiplier,
    `num_res_blocks` blocks per level, a strided downsample between levels (D = levels - 1).
    Time is compressed 2**Dt-fold, Dt = `num_temporal_downsamples`, in one of two layouts:

    - `time_at_latent` (the default layout): the spatial levels are per-frame 2-D convolutions, and
      at the token resolution `TimeToChannel` folds each group of 2**Dt frames into channels; the
      causal 3-D blocks after it mix the groups. Space first, time second, as factorised video
      autoencoders do; the fold keeps the motion inside a group readable from the first step;
    - otherwise every convolution is 3-D and the first Dt spatial downsamples also stride 2 in
      time (MAGVIT-v2's layout).
    """

    def __init__(self, in_channels: int, base_channels: int, channel_multipliers: tuple[int, ...],
                 num_res_blocks: int, out_channels: int, num_temporal_downsamples: int, temporal_kernel: int,
                 time_at_latent: bool = False) -> None:
        super().__init__()
        widths = level_widths(base_channels, channel_multipliers)
        in_time = temporal_levels(len(widths) - 1, num_temporal_downsamples)
        spatial_kernel = 1 if time_at_latent else temporal_kernel  # temporal kernel of the spatial levels
        self.conv_in = CausalConv3d(in_channels, widths[0], spatial_kernel)
        blocks: list[nn.Module] = []
        current = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(CausalResnetBlock(current, width, spatial_kernel))
                current = width
            if level < len(widths) - 1:
                time_stride = 2 if in_time[level] and not time_at_latent else 1
                blocks.append(CausalConv3d(current, current, max(spatial_kernel, time_stride), time_stride=time_stride,
                                           space_stride=2))
        if time_at_latent and num_temporal_downsamples:
            blocks.append(TimeToChannel(current, 2**num_temporal_downsamples))
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

    The mirror of `CausalEncoder`: with `time_at_latent`, time is restored first, at the token
    resolution (`ChannelToTime`), then per-frame 2-D levels upsample space; otherwise the coarsest levels upsample in
    time last-first, so the level that halved time in the encoder doubles it here.
    """

    def __init__(self, in_channels: int, base_channels: int, channel_multipliers: tuple[int, ...],
                 num_res_blocks: int, out_channels: int, num_temporal_downsamples: int, temporal_kernel: int,
                 time_at_latent: bool = False) -> None:
        super().__init__()
        widths = level_widths(base_channels, channel_multipliers)
        in_time = temporal_levels(len(widths) - 1, num_temporal_downsamples)
        spatial_kernel = 1 if time_at_latent else temporal_kernel
        current = widths[-1]
        self.conv_in = CausalConv3d(in_channels, current, temporal_kernel)
        blocks: list[nn.Module] = [CausalResnetBlock(current, current, temporal_kernel)]  # middle block
        if time_at_latent and num_temporal_downsamples:
            blocks.append(CausalResnetBlock(current, current, temporal_kernel))
            blocks.append(ChannelToTime(current, 2**num_temporal_downsamples))
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                blocks.append(CausalResnetBlock(current, widths[level], spatial_kernel))
                current = widths[level]
            if level > 0:
                blocks.append(CausalUpsample(current, widths[level - 1], spatial_kernel,
                                             in_time[level - 1] and not time_at_latent))
                current = widths[level - 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(current)
        self.conv_out = CausalConv3d(current, out_channels, spatial_kernel)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(features)  # (B, widths[-1], t, h, w)
        h = self.blocks(h)  # (B, widths[0], F, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, F, H, W)
