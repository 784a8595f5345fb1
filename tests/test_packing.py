"""pack / unpack: alignment, block ids, positions, and isolation between samples."""

import pytest
import torch

from conftest import SPECS, tiny_model
from mmar.layout import BOS, TokenLayout
from mmar.packing import Segment, pack, unpack
from mmar.transformer import PAD_BLOCK, block_mask


def _sample(spec, text: bytes, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if spec.kind == "codes":
        body = Segment("image", torch.randint(spec.codebook_size, (4, 4), generator=generator))
    elif spec.kind == "vectors":
        body = Segment("image", torch.randn(4, 4, spec.latent_channels, generator=generator))
    else:
        body = Segment("image", torch.randint(spec.codebook_size, (spec.num_tokens,), generator=generator),
                       torch.randn(spec.num_tokens - 1, spec.latent_channels, generator=generator))
    return [Segment("text", torch.tensor(list(text))), body]


def test_pack_unpack_round_trip(head_name):
    layout = TokenLayout([SPECS[head_name]])
    samples = [_sample(SPECS[head_name], b"a red circle", 0), _sample(SPECS[head_name], b"hi", 1),
               _sample(SPECS[head_name], b"", 2)]
    restored = unpack(pack(samples, layout), layout)
    assert len(restored) == len(samples)
    for original, back in zip(samples, restored):
        assert [s.modality for s in back] == [s.modality for s in original]
        for a, b in zip(original, back):
            assert torch.equal(a.targets, b.targets)
            assert (a.inputs is None) == (b.inputs is None)
            if a.inputs is not None:
                assert torch.equal(a.inputs, b.inputs)


def test_causal_segments_give_the_causal_mask_and_shift_by_one():
    layout = TokenLayout([SPECS["next_token"]])
    batch = pack([_sample(SPECS["next_token"], b"abc", 0)], layout)
    length = batch.ids.shape[1]
    mask = block_mask(batch.block, batch.block, torch.arange(length))[0, 0]
    assert torch.equal(mask, torch.ones(length, length, dtype=torch.bool).tril())
    ids = batch.ids[0]
    text = batch.targets["text"]
    # the position before each text byte and before <m:image> predicts it
    assert torch.equal(ids[text.index + 1], text.target)
    image = batch.targets["image"]
    assert torch.equal(ids[image.index + 1] - layout.code_offset["image"], image.target)
    assert ids[0] == BOS and ids[-1] == layout.close_id["image"]
    assert not (image.index == length - 1).any()  # </m> is never a target... nor predicts one


def test_next_scale_blocks_and_targets():
    spec = SPECS["next_scale"]
    layout = TokenLayout([spec])
    sample = _sample(spec, b"ab", 0)
    batch = pack([sample], layout)
    ids, block = batch.ids[0], batch.block[0]
    open_column = int((ids == layout.open_id["image"]).nonzero())
    image = batch.targets["image"]
    assert image.index[0] == open_column and image.target[0] == sample[1].targets[0]  # <m> predicts scale 1
    body = block[open_column + 1: open_column + spec.num_tokens]
    sizes = [h * w for h, w in spec.scales[1:]]
    assert [len(run) for run in torch.split(body, sizes)] == sizes
    assert all((run == run[0]).all() for run in torch.split(body, sizes))  # one block per scale
    assert len(set(run[0].item() for run in torch.split(body, sizes))) == len(sizes)  # distinct, increasing
    mask = block_mask(batch.block, batch.block, torch.arange(len(ids)))[0, 0]
    assert mask[open_column + 1, open_column + 1: open_column + 1 + sizes[0]].all()  # full within a scale
    assert not mask[open_column + 1, open_column + 1 + sizes[0]:].any()  # causal across scales
    assert mask[open_column + 1, : open_column + 1].all()  # sees all the text


def test_positions_and_padding():
    spec = SPECS["next_token"]
    layout = TokenLayout([spec])
    batch = pack([_sample(spec, b"long prompt", 0), _sample(spec, b"", 1)], layout)
    short = batch.block[1]
    padding = short == PAD_BLOCK
    assert padding.any() and not padding[-10:].any() and padding[: padding.sum()].all()  # left padding
    positions = batch.positions[1][~padding]
    assert positions[0].tolist() == [0.0, 0.0, 0.0]  # positions start at 0 whatever the padding
    grid = positions[2:18]  # after <bos>, <m>: the 4x4 grid
    assert grid[:, 1].tolist() == [2 + r for r in range(4) for _ in range(4)]
    assert grid[:, 2].tolist() == [2 + c for _ in range(4) for c in range(4)]


@pytest.mark.parametrize("head", ["next_token", "next_scale"])
def test_no_attention_across_samples(head):
    model = tiny_model(head, torch.float64)
    spec = SPECS[head]
    # b and c differ in every token but have the same length, so row 0 is laid out identically
    a, b, c = _sample(spec, b"first", 0), _sample(spec, b"second", 1), _sample(spec, b"OTHER!", 2)
    hidden = {}
    for key, batch in {"b": pack([a, b], model.layout), "c": pack([a, c], model.layout)}.items():
        x = model.embed(batch.ids, batch.vectors)
        h = model.transformer(x, torch.arange(x.shape[1]), batch.positions, batch.block)
        hidden[key] = h[0]
    torch.testing.assert_close(hidden["b"], hidden["c"], rtol=0, atol=0)


def test_bad_samples_are_clear_errors():
    layout = TokenLayout([SPECS["next_scale"]])
    with pytest.raises(ValueError, match="text segment"):
        pack([[Segment("image", torch.zeros(30, dtype=torch.long))]], layout)
    with pytest.raises(ValueError, match="unknown modality"):
        pack([[Segment("text", torch.tensor([1])), Segment("audio", torch.zeros(3))]], layout)
    with pytest.raises(ValueError, match="next-scale segment needs"):
        pack([[Segment("text", torch.tensor([1])), Segment("image", torch.zeros(5, dtype=torch.long), torch.zeros(4, 6))]], layout)
