"""The transformer: the block-id mask, the KV cache, rotary positions."""

import pytest
import torch

from mmar.transformer import PAD_BLOCK, Transformer, TransformerConfig, block_mask, real_positions

CONFIG = TransformerConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_len=64)


def _inputs(batch=2, length=10, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, CONFIG.dim, generator=generator, dtype=dtype)
    positions = torch.arange(length, dtype=dtype)[None, :, None].expand(batch, length, 3).clone()
    block = torch.arange(length).expand(batch, length).clone()
    return x, positions, block


def test_block_ids_of_own_blocks_give_the_causal_mask():
    block = torch.arange(6).expand(2, 6)
    mask = block_mask(block, block, torch.arange(6))[:, 0]
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(mask, causal.expand(2, 6, 6))


def test_padding_is_invisible_and_sees_only_itself():
    block = torch.tensor([[PAD_BLOCK, PAD_BLOCK, 2, 3]])
    mask = block_mask(block, block, torch.arange(4))[0, 0]
    assert not mask[2:, :2].any()  # real queries never see padding
    assert torch.equal(mask[0], torch.tensor([True, False, False, False]))
    assert torch.equal(mask[1], torch.tensor([False, True, False, False]))


def test_one_block_per_scale_gives_full_attention_within_a_scale():
    block = torch.tensor([[0, 1, 1, 1, 1, 5, 5]])
    mask = block_mask(block, block, torch.arange(7))[0, 0]
    assert mask[1:5, 1:5].all() and not mask[1:5, 5:].any() and mask[5:, :].all()


def test_block_mask_matches_sdpa_is_causal():
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs()
    masked = model(x, torch.arange(10), positions, block)
    # Reference: same network with is_causal attention (the fast path the mask must equal).
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def causal_sdpa(q, k, v, attn_mask=None, **kwargs):
        return original(q, k, v, is_causal=True, **kwargs)

    F.scaled_dot_product_attention = causal_sdpa
    try:
        reference = model(x, torch.arange(10), positions, block)
    finally:
        F.scaled_dot_product_attention = original
    torch.testing.assert_close(masked, reference)


def test_cached_decode_equals_full_forward():
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs()
    full = model(x, torch.arange(10), positions, block)
    model.setup_caches(2, 16)
    prefix = model(x[:, :6], torch.arange(6), positions[:, :6], block[:, :6])
    steps = [model(x[:, i:i + 1], torch.tensor([i]), positions[:, i:i + 1], block[:, i:i + 1]) for i in range(6, 10)]
    model.clear_caches()
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, rtol=1e-10, atol=1e-10)


def test_shared_prefill_row_and_visible_slots_equal_the_full_computation():
    """A prefill of the distinct rows only, spread to the rest (`spread_rows`), then steps that
    attend to the written slots only (`visible`), give what every row and the whole cache give."""
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs(batch=4)
    x[3], positions[3], block[3] = x[2], positions[2], block[2]  # rows 2 and 3 are one row
    model.setup_caches(4, 16)
    full_prefix = model(x[:, :6], torch.arange(6), positions[:, :6], block[:, :6])
    full_steps = [model(x[:, i:i + 1], torch.tensor([i]), positions[:, i:i + 1], block[:, i:i + 1])
                  for i in range(6, 10)]
    model.setup_caches(4, 16)
    prefix = model(x[:3, :6], torch.arange(6), positions[:3, :6], block[:3, :6], visible=6)  # rows 0..2 only
    model.spread_rows(torch.tensor([0, 1, 2, 2]), 6)  # the 6 written slots
    steps = [model(x[:, i:i + 1], torch.tensor([i]), positions[:, i:i + 1], block[:, i:i + 1], visible=i + 1)
             for i in range(6, 10)]
    model.clear_caches()
    torch.testing.assert_close(prefix, full_prefix[:3], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat(steps, dim=1), torch.cat(full_steps, dim=1), rtol=1e-10, atol=1e-10)


def test_packed_prefill_equals_the_padded_one():
    """A packed prefill (the layers on real positions only) of a left-padded batch writes the same
    keys and values and gives the same hidden states at real positions as the padded prefill
    (zeros at padding), and the decode steps after it are the same, also for a prefill of the
    cache's first rows."""
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs(batch=3, length=8)
    block[0, :5], block[1, :1] = PAD_BLOCK, PAD_BLOCK  # rows of 3, 7 and 8 real positions
    real = block < PAD_BLOCK

    def run(packed):
        model.setup_caches(4, 16)
        where = real_positions(block) if packed else None
        prefix = model(x, torch.arange(8), positions, block, visible=8, where=where)  # rows 0..2 of 4
        model.spread_rows(torch.tensor([0, 1, 2, 0]))
        step = torch.randn(4, 1, CONFIG.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        after = model(step, torch.tensor([8]), torch.full((4, 1, 3), 9.0, dtype=torch.float64),
                      torch.full((4, 1), 8), visible=16)
        keys = [layer.attention.cache.keys[:, :, :8].transpose(1, 2)[:3][real] for layer in model.layers]
        model.clear_caches()
        return prefix, after, keys

    padded, packed = run(False), run(True)
    torch.testing.assert_close(packed[0][real], padded[0][real], rtol=1e-12, atol=1e-12)
    assert (packed[0][~real] == 0).all()
    torch.testing.assert_close(packed[1], padded[1], rtol=1e-12, atol=1e-12)
    for packed_keys, padded_keys in zip(packed[2], padded[2]):
        torch.testing.assert_close(packed_keys, padded_keys, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="setup_caches"):
        model(x, torch.arange(8), positions, block, where=real_positions(block))


def test_one_block_given_once_equals_the_block_repeated():
    """A block (B, 1) for a call of several positions (a next-scale scale: one mask row shared by its
    queries) gives what the block repeated over the positions gives, cached and uncached, with a
    padded row and unwritten slots in the cache."""
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs(batch=2, length=10)
    block[1, :3] = PAD_BLOCK  # row 1's prompt is left-padded
    scale = torch.full((2, 1), 6)  # positions 6..9: one block

    def run(scale_block):
        model.setup_caches(2, 16)
        model(x[:, :6], torch.arange(6), positions[:, :6], block[:, :6])
        return model(x[:, 6:], torch.arange(6, 10), positions[:, 6:], scale_block, visible=16)

    torch.testing.assert_close(run(scale), run(scale.expand(2, 4)), rtol=1e-12, atol=1e-12)
    model.clear_caches()
    whole = torch.cat([block[:, :6], scale.expand(2, 4)], dim=1)  # (2, 10)
    torch.testing.assert_close(model(x, torch.arange(10), positions, whole)[:, 6:], run(scale), rtol=1e-10,
                               atol=1e-10)


def test_left_padding_changes_nothing():
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs(batch=1)
    plain = model(x, torch.arange(10), positions, block)
    padded_x = torch.cat([torch.randn(1, 3, CONFIG.dim, dtype=torch.float64), x], dim=1)
    padded_positions = torch.cat([torch.zeros(1, 3, 3, dtype=torch.float64), positions], dim=1)
    padded_block = torch.cat([torch.full((1, 3), PAD_BLOCK), block + 3], dim=1)
    padded = model(padded_x, torch.arange(13), padded_positions, padded_block)
    torch.testing.assert_close(padded[:, 3:], plain)
    assert torch.isfinite(padded).all()


def test_positions_matter_through_every_axis():
    torch.manual_seed(0)
    model = Transformer(CONFIG).double().eval()
    x, positions, block = _inputs(batch=1)
    base = model(x, torch.arange(10), positions, block)
    for axis in range(3):
        moved = positions.clone()
        moved[0, 5:, axis] += 1  # keys from position 5 on shift along one axis only
        assert not torch.allclose(model(x, torch.arange(10), moved, block)[0, 6:], base[0, 6:])


def test_too_long_sequence_is_a_clear_error():
    model = Transformer(CONFIG)
    x, positions, block = _inputs(batch=1, length=65)
    try:
        model(x.float(), torch.arange(65), positions.float(), block)
    except ValueError as error:
        assert "max_len" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_attend_one_equals_sdpa_with_grouped_heads_and_mask():
    """The compiled decode step's written-out attention of one query gives SDPA's answer."""
    from mmar.transformer import attend_one

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 1, 8, generator=generator, dtype=torch.float64)
    k, v = (torch.randn(3, 2, 10, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    mask = torch.zeros(3, 1, 1, 10, dtype=torch.float64)
    mask[0, ..., :4] = float("-inf")  # padding and unwritten slots
    mask[2, ..., 7:] = float("-inf")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(attend_one(q, k, v, mask), expected, rtol=1e-12, atol=1e-12)
