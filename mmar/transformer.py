"""Llama-style causal transformer over input embeddings, with block-id masking and a static KV cache.

RMSNorm, SwiGLU, grouped-query attention through `scaled_dot_product_attention`, and multi-axis
rotary positions (M-RoPE, Qwen2-VL; MM-RoPE): the rotary pairs are split across three axes
(t, row, col), so text at position p uses (p, p, p) and an image grid its (t, row, col). The cache
follows gpt-fast: pre-allocated keys/values written at given slots, one forward for training,
prefill and decode.

The mask is built from block ids alone: query i sees key j iff block[j] <= block[i] (same row).
Every position its own block gives causal attention; one block per scale gives VAR's mask.
Padding carries the sentinel block PAD_BLOCK, which no query reaches, and a padding query sees
only itself so no row is fully masked (SDPA would return NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: block id of padding and of unwritten cache slots: above every real block id.
PAD_BLOCK = 2**30


@dataclass
class TransformerConfig:
    dim: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    mlp_ratio: float = 8 / 3
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    max_len: int = 512
    dropout: float = 0.0  # on each block's attention and MLP outputs while training (regularises small data)

    LIMITS = {"dim": "[2, 65536]", "num_layers": "[1, 1024]", "num_heads": "[1, 1024]", "num_kv_heads": "[1, 1024]",
              "mlp_ratio": "(0, 64]", "norm_eps": "(0, 1)", "rope_theta": "(1, inf)", "max_len": "[4, 1048576]",
              "dropout": "[0, 1)"}

    def check(self) -> None:
        if self.dim % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"dim {self.dim} / num_heads {self.num_heads} / num_kv_heads {self.num_kv_heads} do not divide")
        if (self.dim // self.num_heads) % 2:
            raise ValueError("the head dimension must be even for rotary positions")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)  # in float32


class MultiAxisRotary(nn.Module):
    """Rotary embedding whose frequency pairs are split over 3 position axes (t, row, col)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        num_pairs = head_dim // 2
        # Split the pairs as evenly as possible; the first axis takes the remainder.
        sections = [num_pairs - 2 * (num_pairs // 3), num_pairs // 3, num_pairs // 3]
        inverse = [1.0 / theta ** (torch.arange(n, dtype=torch.float64) / max(n, 1)) for n in sections]
        self.register_buffer("inverse_frequencies", torch.cat(inverse), persistent=False)  # (P,)
        self.register_buffer("axis", torch.repeat_interleave(torch.arange(3), torch.tensor(sections)), persistent=False)  # (P,)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T, 3) -> cos, signed sin (B, 1, T, hd) in `dtype` (float64 stays float64).

        Both come laid out for `apply_rotary` (computed once per forward, used by every layer):
        cos = [cos, cos] and sin = [-sin, sin] over the two halves of the head dimension.
        """
        work = torch.float64 if dtype == torch.float64 else torch.float32
        per_pair = positions.to(work)[..., self.axis]  # (B, T, P)
        angles = per_pair * self.inverse_frequencies.to(work)  # (B, T, P)
        cos, sin = angles.cos(), angles.sin()  # (B, T, P) each
        return (torch.cat([cos, cos], dim=-1).unsqueeze(1).to(dtype),
                torch.cat([-sin, sin], dim=-1).unsqueeze(1).to(dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) by `MultiAxisRotary`'s cos, signed sin (B, 1, T, hd), NeoX half-split:
    [a, b] -> [a cos - b sin, b cos + a sin]."""
    first, second = x.chunk(2, dim=-1)  # (B, H, T, hd/2) each
    return x * cos + torch.cat([second, first], dim=-1) * sin


class KVCache(nn.Module):
    """Pre-allocated keys and values for one layer: (B, H_kv, L, hd)."""

    def __init__(self, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               visible: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys, values (B', H_kv, T, hd) of the first B' rows at `slots` (T,) -> the first B'
        rows' keys, values over the first `visible` slots (all when None): (B', H_kv, visible, hd)."""
        rows = keys.shape[0]
        self.keys[:rows].index_copy_(2, slots, keys)
        self.values[:rows].index_copy_(2, slots, values)
        return self.keys[:rows, :, :visible], self.values[:rows, :, :visible]

    def update_at(self, rows: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  batch: int, visible: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys, values (M, H_kv, hd) of M positions at (`rows`, `slots`) (M,) each -> the first
        `batch` rows' keys, values over the first `visible` slots: (batch, H_kv, visible, hd)."""
        self.keys[rows, :, slots] = keys
        self.values[rows, :, slots] = values
        return self.keys[:batch, :, :visible], self.values[:batch, :, :visible]


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.qkv = nn.Linear(config.dim, (config.num_heads + 2 * config.num_kv_heads) * config.head_dim, bias=False)
        self.out = nn.Linear(config.num_heads * config.head_dim, config.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, slots, mask, visible=None, where=None):
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, -1, self.head_dim).transpose(1, 2)  # (B, H + 2 H_kv, T, hd)
        rotated = self.num_heads + self.num_kv_heads
        qk = apply_rotary(qkv[:, :rotated], cos, sin)  # (B, H + H_kv, T, hd): queries and keys in one go
        q, k, v = qk[:, :self.num_heads], qk[:, self.num_heads:], qkv[:, rotated:]
        if where is not None:
            return self.out(self.attend_packed(q, k, v, slots, mask, visible, where))
        if self.cache is not None:
            k, v = self.cache.update(slots, k, v, visible)  # (B, H_kv, L, hd) each
        if length == 1 and torch.compiler.is_compiling():
            y = attend_one(q, k, v, mask)  # (B, H, 1, hd): a compiled decode step
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))  # (B, T, H hd)

    def attend_packed(self, q, k, v, slots, mask, visible, where):
        """Attention of a packed prompt (`Transformer.forward`'s `where`): q, k, v (1, H or H_kv, M, hd)
        of the M real positions, which sit at `where` = (rows, columns) (M,) each of the (B, T) batch
        -> (1, M, H hd). Keys and values go to the cache at (row, slot); the queries are laid out as
        (B, H, T, hd) for one attention call over the cache (a padding query, zero, sees its own slot)."""
        rows, columns = where
        q, k, v = (t[0].transpose(0, 1) for t in (q, k, v))  # (M, H or H_kv, hd)
        batch, _, length, _ = mask.shape
        k, v = self.cache.update_at(rows, slots[columns], k, v, batch, visible)  # (B, H_kv, visible, hd) each
        laid_out = q.new_zeros(batch, self.num_heads, length, self.head_dim)  # (B, H, T, hd)
        laid_out[rows, :, columns] = q
        y = F.scaled_dot_product_attention(laid_out, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, T, hd)
        return y[rows, :, columns].reshape(1, len(rows), -1)  # (1, M, H hd)


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row, q (B, H, 1, hd), over k, v (B, H_kv, L, hd) with an additive
    mask (B, 1, 1, L) -> (B, H, 1, hd), written out as two products summed, around a softmax.

    For the compiled decode step: inductor builds each sum as a loop of its own (the scores summed
    over hd, the output over L, vectorized over hd) and fuses the scale, mask and softmax into them;
    each key/value head serves its group of query heads without a copy. Measured on CPU (d=192,
    6 heads over 2 KV heads, CFG): ~10% faster a 64-token image at batch 16 than as two batched
    matmuls, ~15% for 256 tokens at batch 1 and 16: a library call's set-up outweighs one query's
    work (the matmuls in turn beat SDPA's flash kernel by ~12%)."""
    batch, heads, _, head_dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, 1, head_dim) * head_dim ** -0.5  # (B, H_kv, G, 1, hd)
    scores = (grouped * k[:, :, None]).sum(-1) + mask.view(batch, 1, 1, length)  # (B, H_kv, G, L)
    weights = scores.softmax(dim=-1)[..., None]  # (B, H_kv, G, L, 1)
    return (weights * v[:, :, None]).sum(-2).view(batch, heads, 1, head_dim)


class FeedForward(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        hidden = 64 * math.ceil(config.mlp_ratio * config.dim / 64)
        self.gate_up = nn.Linear(config.dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, F) each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)  # identity in eval mode and at p = 0

    def forward(self, x, cos, sin, slots, mask, visible=None, where=None):
        x = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, slots, mask, visible, where))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def block_mask(query_block: torch.Tensor, key_block: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The one attention rule. query_block (B, T), key_block (B, L), slots (T,) -> mask (B, 1, T, L) bool.

    Query i sees key j iff block[j] <= block[i]; a padding query (PAD_BLOCK) sees only its own slot.
    """
    visible = key_block[:, None, :] <= query_block[:, :, None]  # (B, T, L)
    visible &= (query_block < PAD_BLOCK)[:, :, None]
    own = torch.arange(key_block.shape[1], device=slots.device)[None, :] == slots[:, None]  # (T, L)
    return (visible | own).unsqueeze(1)


def real_positions(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of a batch that are not padding: block (B, T) -> (rows (M,), columns (M,)),
    row by row (`Transformer.forward`'s `where`)."""
    return (block < PAD_BLOCK).nonzero(as_tuple=True)


class Transformer(nn.Module):
    """forward(x (B, T, D), slots (T,), positions (B, T, 3), block (B, T)) -> hidden (B, T, D)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.rotary = MultiAxisRotary(config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.cache_block: torch.Tensor | None = None  # (B, L) block id of every cache slot
        # The last caches, kept after `clear_caches` (a plain tuple: no submodule, no state) so that
        # the next generation of the same shape writes into the same memory: a compiled decode step
        # recorded as a CUDA graph replays on fixed addresses.
        self._spare_caches: tuple | None = None

    def setup_caches(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        """Pre-allocate keys, values and block ids for `batch` rows of up to `max_len` positions.

        The same batch, length, dtype and device reuse the last caches, emptied (block ids back to
        the sentinel; keys and values zeroed, so a masked slot never carries a stale non-finite value)."""
        if max_len > self.config.max_len:
            raise ValueError(f"sequence of {max_len} positions exceeds the model's max_len {self.config.max_len}")
        weight = self.norm.weight
        dtype = dtype or weight.dtype
        key = (batch, max_len, dtype, weight.device)
        if self._spare_caches is not None and self._spare_caches[0] == key:
            caches, cache_block = self._spare_caches[1:]
            for cache in caches:
                cache.keys.zero_()
                cache.values.zero_()
            cache_block.fill_(PAD_BLOCK)
        else:
            self._spare_caches = None  # free the old memory before allocating the new
            caches = [KVCache(batch, max_len, self.config.num_kv_heads, self.config.head_dim, dtype, weight.device)
                      for _ in self.layers]
            cache_block = torch.full((batch, max_len), PAD_BLOCK, dtype=torch.long, device=weight.device)  # (B, L)
        for layer, cache in zip(self.layers, caches):
            layer.attention.cache = cache
        self.cache_block = cache_block
        self._spare_caches = (key, caches, cache_block)

    def clear_caches(self, release: bool = False) -> None:
        """Detach the caches (the forward is uncached again); `release` also frees their memory."""
        for layer in self.layers:
            layer.attention.cache = None
        self.cache_block = None
        if release:
            self._spare_caches = None

    def spread_rows(self, index: torch.Tensor, written: int | None = None) -> None:
        """After a prefill of the caches' first R rows, row i of every cache becomes computed row
        `index[i]` (B,) (keys, values, block ids): a prefill that computed each distinct row once.

        Only the first `written` slots are copied (all when None): the rest are still empty in every
        row (measured at batch 16, d=256, a 160-slot cache: 1.3 ms for 30 slots, 7.2 ms for all)."""
        for layer in self.layers:
            cache = layer.attention.cache
            cache.keys[:, :, :written] = cache.keys[index, :, :written]
            cache.values[:, :, :written] = cache.values[index, :, :written]
        self.cache_block[:, :written] = self.cache_block[index, :written]

    def forward(self, x: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, block: torch.Tensor,
                visible: int | None = None, where: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """With caches, x may cover the first B' rows of the cache only (`spread_rows` fills the rest), and
        `visible` (a Python int: static under torch.compile) limits attention to the first `visible`
        cache slots, which must include every slot written so far: the caller's count of written slots
        (a next-scale scale, a prefill) saves attending to the empty end of the cache.

        `block` may be (B, 1) for T > 1: one block for all T positions (a next-scale scale). Their
        queries then share one mask row, (B, 1, 1, L), which SDPA broadcasts: measured ~4% faster a
        batch-16 next-scale image on CPU than a (B, 1, T, L) mask.

        `where` (with caches: a prompt's prefill) = (rows, columns) (M,) each, the real positions
        (`real_positions`): the layers run on those only, packed into one row, and attention lays the
        queries out again (`Attention.attend_packed`); the other positions get zero hidden states. A
        prompt batch is left-padded to its longest prompt, and guidance's empty-text rows are almost
        all padding: at batch 1 half the prefill's rows. The caller finds them (a host sync), so that
        a compiled forward has no data-dependent shape."""
        shared = block.shape[1] == 1 and x.shape[1] > 1  # static: one mask row for every query
        every_block = block.expand(-1, x.shape[1])  # (B, T)
        if self.cache_block is not None:
            cache_block = self.cache_block[:x.shape[0]]  # (B', L)
            cache_block.index_copy_(1, slots, every_block)
            key_block = cache_block[:, :visible]  # (B', visible)
        else:
            if x.shape[1] > self.config.max_len:
                raise ValueError(f"sequence of {x.shape[1]} positions exceeds the model's max_len {self.config.max_len}")
            key_block = every_block  # (B, T)
        sees = block_mask(block, key_block, slots[:1] if shared else slots)  # (B, 1, T or 1, L) bool
        # One additive mask for every layer (a bool mask is converted again inside each SDPA call).
        mask = torch.zeros(sees.shape, dtype=x.dtype, device=x.device).masked_fill_(~sees, float("-inf"))
        packed = where is not None
        if packed:
            if self.cache_block is None:
                raise ValueError("a packed forward writes into the caches: call setup_caches first")
            laid_out, x, positions = x, x[where][None], positions[where][None]  # (1, M, D), (1, M, 3)
        cos, sin = self.rotary(positions, x.dtype)  # (B or 1, 1, T or M, hd) each
        for layer in self.layers:
            x = layer(x, cos, sin, slots, mask, visible, where)
        x = self.norm(x)
        if packed:
            x = torch.zeros_like(laid_out).index_put_(where, x[0])  # (B, T, D)
        return x
