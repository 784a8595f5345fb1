"""One input path (`embed_tokens`), multi-codebook codes with the delay pattern, text generation,
the text head choosing a modality, and the head/tokenizer kind check."""

import pytest
import torch

from conftest import SPECS, TINY, fake_teacher_inputs
from mmar import patterns
from mmar.generate import SamplingConfig, choose_modality, generate, generate_text
from mmar.layout import EOS, ModalitySpec
from mmar.model import MMAR, HeadChoice, MMARConfig, check_head
from mmar.packing import Segment, pack, unpack

RVQ = ModalitySpec("audio", 8, 3, 0, (6, 1, 1), pattern="delay", token_shape=(6,), medium="audio")


def _model(specs: dict[str, tuple[ModalitySpec, str]], seed=0) -> MMAR:
    torch.manual_seed(seed)
    heads = {"text": HeadChoice(), **{name: HeadChoice(head) for name, (_, head) in specs.items()}}
    return MMAR(MMARConfig(TINY, [spec for spec, _ in specs.values()], heads)).double().eval()


def _renamed(spec: ModalitySpec, name: str) -> ModalitySpec:
    return ModalitySpec(**{**spec.__dict__, "name": name})


MIXED = {"tok": (_renamed(SPECS["next_token"], "tok"), "next_token"),
         "scale": (_renamed(SPECS["next_scale"], "scale"), "next_scale"),
         "flow": (_renamed(SPECS["flow_matching"], "flow"), "flow_matching"),
         "audio": (RVQ, "next_token")}


def _body(spec: ModalitySpec, generator) -> Segment:
    if spec.kind == "scales":
        return Segment(spec.name, torch.randint(spec.codebook_size, (spec.num_tokens,), generator=generator),
                       torch.randn(spec.num_tokens - 1, spec.latent_channels, generator=generator, dtype=torch.float64))
    if spec.kind == "vectors":
        return Segment(spec.name, torch.randn(*spec.output_shape, spec.latent_channels, generator=generator,
                                              dtype=torch.float64))
    shape = (*spec.output_shape, spec.num_codebooks) if spec.multi_codebook else spec.output_shape
    return Segment(spec.name, torch.randint(spec.codebook_size, shape, generator=generator))


def test_training_and_generation_embed_the_same_values_the_same_way():
    model = _model(MIXED)
    generator = torch.Generator().manual_seed(0)
    for name, (spec, _) in MIXED.items():
        body = _body(spec, generator)
        batch = pack([[Segment("text", torch.tensor(list(b"hi"))), body]], model.layout)
        x = model.embed(batch.ids, batch.vectors)[0]  # (T, D) what training feeds
        first = 4  # <bos> h i <m>
        if spec.kind == "scales":
            scale = torch.repeat_interleave(torch.arange(1, len(spec.scales)),
                                            torch.tensor([h * w for h, w in spec.scales[1:]]))
            direct = model.embed_tokens(name, body.inputs, scale)  # (L-1, D)
        elif spec.multi_codebook:
            direct = model.embed_tokens(name, patterns.interleave(spec.pattern, body.targets.view(-1, spec.num_codebooks)))
        elif spec.kind == "vectors":
            direct = model.embed_tokens(name, body.targets.reshape(-1, spec.latent_channels))
        else:
            direct = model.embed_tokens(name, body.targets.reshape(-1))
        torch.testing.assert_close(x[first:first + len(direct)], direct, rtol=0, atol=0)


def test_a_mixed_batch_packs_every_modality_and_unpacks_back():
    model = _model(MIXED)
    generator = torch.Generator().manual_seed(1)
    samples = [[Segment("text", torch.tensor(list(b"x" * i))), _body(spec, generator)]
               for i, (spec, _) in enumerate(s for s in MIXED.values())]
    batch = pack(samples, model.layout)
    assert set(batch.targets) == {"text", *MIXED}
    outputs = model(batch, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(o.loss_sum) and o.count > 0 for o in outputs.values())
    for original, back in zip(samples, unpack(batch, model.layout)):
        assert torch.equal(original[1].targets, back[1].targets)  # in the tokenizer's own token_shape


def test_delay_pattern_targets_have_holes_and_are_causal():
    layout = _model({"audio": (RVQ, "next_token")}).layout
    codes = torch.arange(18).view(6, 3) % 8
    batch = pack([[Segment("text", torch.zeros(0, dtype=torch.long)), Segment("audio", codes)]], layout)
    target = batch.targets["audio"].target  # (steps, Q)
    assert target.shape == (6 + 2, 3) and int((target == patterns.IGNORE).sum()) == 3 * 2
    # the position predicting step s sits before step s's inputs: only earlier steps are visible
    steps = batch.vectors["audio"]
    assert torch.equal(batch.targets["audio"].index[1:], steps.index[:-1])


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_multi_codebook_generation_cached_equals_uncached(guidance):
    model = _model({"audio": (RVQ, "next_token")})
    prompts = [torch.tensor(list(b"a beep")), torch.tensor(list(b"hi"))]
    config = SamplingConfig(guidance_scale=guidance, seed=2)
    cached = generate(model, prompts, "audio", config)
    assert cached.shape == (2, 6, 3) and cached.min() >= 0 and cached.max() < 8
    assert torch.equal(cached, generate(model, prompts, "audio", config, use_cache=False))


def test_text_generation_cached_equals_uncached_and_stops():
    model = _model(MIXED)
    images = torch.randint(16, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    samples = [[Segment("text", torch.zeros(0, dtype=torch.long)), Segment("tok", image)] for image in images]
    for temperature in (0.0, 1.0):
        config = SamplingConfig(temperature=temperature, seed=4)
        cached = generate_text(model, samples, config, max_new_tokens=12)
        assert [len(t) <= 12 for t in cached] == [True, True]
        assert all(torch.equal(a, b) for a, b in zip(cached, generate_text(model, samples, config, max_new_tokens=12,
                                                                         use_cache=False)))
        assert all(((t >= 0) & (t < 256)).all() for t in cached)  # bytes only: stops are cut off


def test_text_stops_at_eos():
    model = _model(MIXED)
    layout = model.layout
    head = model.heads["text"]
    with torch.no_grad():  # make <eos> the only likely token after the first byte
        head.proj.weight.zero_()
        head.proj.weight[EOS] = 1.0
        head.proj.weight[layout.byte_offset + ord("z")] = 0.5
    samples = [[Segment("text", torch.tensor(list(b"q")))]]
    out = generate_text(model, samples, SamplingConfig(temperature=0.0), max_new_tokens=5)
    assert out[0].numel() == 0  # greedy: <eos> at once


def test_the_text_head_chooses_only_among_open_tokens():
    model = _model(MIXED)
    prompts = [torch.tensor(list(b"a red circle"))] * 64
    chosen = choose_modality(model, prompts, SamplingConfig(temperature=1.0, seed=0))
    assert set(chosen) <= set(MIXED) and len(set(chosen)) > 1  # random weights: several are drawn
    assert set(choose_modality(model, prompts, SamplingConfig(seed=0), among=["flow"])) == {"flow"}
    with torch.no_grad():  # make <m:scale> the likeliest open token
        model.heads["text"].proj.weight[model.layout.open_id["scale"]] *= 40
    assert choose_modality(model, prompts[:3], SamplingConfig(temperature=0.0)) == ["scale"] * 3
    with pytest.raises(ValueError, match="cannot choose"):
        choose_modality(model, prompts, SamplingConfig(), among=["video"])


@pytest.mark.parametrize("head, spec, ok", [
    ("next_token", SPECS["next_token"], True), ("next_scale", SPECS["next_scale"], True),
    ("flow_matching", SPECS["flow_matching"], True), ("next_scale", SPECS["next_token"], False),
    ("flow_matching", SPECS["next_token"], False), ("next_token", SPECS["flow_matching"], False),
    ("next_token", RVQ, True),
])
def test_head_and_tokenizer_kinds_are_checked(head, spec, ok):
    if ok:
        check_head(head, spec)
        return
    with pytest.raises(ValueError) as error:
        check_head(head, spec)
    assert "\n" not in str(error.value) and "pick a head among" in str(error.value)


def test_next_scale_needs_teacher_inputs_and_generates_with_them():
    model = _model({"scale": MIXED["scale"]})
    spec = MIXED["scale"][0]
    out = generate(model, [torch.tensor(list(b"a"))], "scale", SamplingConfig(seed=0),
                   teacher_inputs=fake_teacher_inputs(spec, torch.float64))
    assert out.shape == (1, spec.num_tokens)
