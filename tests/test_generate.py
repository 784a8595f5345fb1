"""Generation: cached equals uncached (float64), seeds reproduce, guidance and options behave."""

import pytest
import torch

from conftest import SPECS, TINY, fake_teacher_inputs, tiny_model
from mmar.bench import has_cxx_compiler
from mmar.generate import SamplingConfig, generate
from mmar.layout import ModalitySpec
from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.packing import Segment, pack

PROMPTS = [torch.tensor(list(b"a red circle")), torch.tensor(list(b"hi"))]


def _generate(model, head, config, use_cache=True, dtype=torch.float64):
    teacher = fake_teacher_inputs(SPECS[head], dtype) if head == "next_scale" else None
    options = {"num_steps": 4} if head == "flow_matching" else {}
    config.head_options.update(options)
    return generate(model, PROMPTS, "image", config, teacher_inputs=teacher, use_cache=use_cache)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_equals_uncached(head_name, guidance):
    model = tiny_model(head_name, torch.float64)
    cached = _generate(model, head_name, SamplingConfig(guidance_scale=guidance, seed=3), use_cache=True)
    uncached = _generate(model, head_name, SamplingConfig(guidance_scale=guidance, seed=3), use_cache=False)
    if head_name == "flow_matching":
        torch.testing.assert_close(cached, uncached, rtol=1e-9, atol=1e-9)
    else:
        assert torch.equal(cached, uncached)


def test_repeated_prompts_are_prefilled_once_and_draw_as_if_each_were_computed(head_name):
    """Samples of one prompt share one prefilled row (and guidance's empty-text rows another): the
    cached, deduplicated prefill draws exactly what recomputing every row draws."""
    model = tiny_model(head_name, torch.float64)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0].clone(), PROMPTS[0]]
    teacher = fake_teacher_inputs(SPECS[head_name], torch.float64) if head_name == "next_scale" else None
    config = SamplingConfig(guidance_scale=3.0, seed=3, head_options={"num_steps": 4} if head_name == "flow_matching" else {})
    runs = [generate(model, prompts, "image", config, teacher_inputs=teacher, use_cache=cached) for cached in (True, False)]
    if head_name == "flow_matching":
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-9)
    else:
        assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][2])  # one prefill, yet each sample draws its own codes


def test_a_long_cache_attended_in_spans_draws_what_recomputing_draws():
    """A 12x12 image after a prompt fills a 160-slot cache: the cached loop attends to 128 slots, then
    to all 160 (`Sequence.span`), and draws what recomputing the whole sequence draws."""
    from dataclasses import replace

    torch.manual_seed(0)
    spec = ModalitySpec("image", 16, 1, 0, (1, 12, 12))
    config = MMARConfig(replace(TINY, max_len=256), [spec], {"text": HeadChoice(), "image": HeadChoice("next_token")})
    model = MMAR(config).double().eval()
    sampling = SamplingConfig(guidance_scale=3.0, seed=1)
    cached, uncached = (generate(model, PROMPTS, "image", sampling, use_cache=flag) for flag in (True, False))
    assert torch.equal(cached, uncached)


def test_first_copies_maps_each_row_to_its_first_equal():
    from mmar.generate import first_copies

    a, b = torch.tensor([1, 2]), torch.tensor([3])
    assert first_copies([a, b, a.clone()], guided=False) == [0, 1, 0]
    assert first_copies([a, b, a.clone()], guided=True) == [0, 1, 0, 3, 3, 3]


def test_output_shapes(head_name):
    model = tiny_model(head_name, torch.float64)
    out = _generate(model, head_name, SamplingConfig(seed=0))
    expected = {"next_token": (2, 4, 4), "next_scale": (2, SPECS["next_scale"].num_tokens), "flow_matching": (2, 4, 4, 3)}
    assert tuple(out.shape) == expected[head_name]
    if head_name != "flow_matching":
        assert out.dtype == torch.long and out.min() >= 0 and out.max() < SPECS[head_name].codebook_size


def test_same_seed_same_tokens_other_seed_differs(head_name):
    model = tiny_model(head_name, torch.float64)
    first = _generate(model, head_name, SamplingConfig(seed=5))
    again = _generate(model, head_name, SamplingConfig(seed=5))
    other = _generate(model, head_name, SamplingConfig(seed=6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_prefill_hidden_equals_training_forward():
    """The cached prefill + decode states are those a full training forward computes (next-token)."""
    model = tiny_model("next_token", torch.float64)
    codes = _generate(model, "next_token", SamplingConfig(guidance_scale=1.0, temperature=0.0, seed=0))
    batch = pack([[Segment("text", PROMPTS[0]), Segment("image", codes[0])]], model.layout)
    x = model.embed(batch.ids, batch.vectors)
    hidden = model.transformer(x, torch.arange(x.shape[1]), batch.positions, batch.block).flatten(0, 1)
    image = batch.targets["image"]
    logits = model.heads["image"].logits(hidden[image.index])[:, 0]  # (16, V)
    assert torch.equal(logits.argmax(-1), codes[0].flatten())  # greedy decode = argmax of the full forward


def test_greedy_ignores_seed_and_top_k_1_is_greedy():
    model = tiny_model("next_token", torch.float64)
    greedy = _generate(model, "next_token", SamplingConfig(temperature=0.0, seed=1))
    assert torch.equal(greedy, _generate(model, "next_token", SamplingConfig(temperature=0.0, seed=2)))
    assert torch.equal(greedy, _generate(model, "next_token", SamplingConfig(top_k=1, seed=9)))


def test_linear_schedule_is_used():
    config = SamplingConfig(guidance_scale=4.0, guidance_schedule="linear")
    assert config.guidance_at(0, 4) == pytest.approx(1.75) and config.guidance_at(3, 4) == pytest.approx(4.0)
    model = tiny_model("next_scale", torch.float64)
    head, seen = model.heads["image"], []
    sample = head.sample

    def spy(hidden, **options):
        seen.append(options["guidance_scale"])
        return sample(hidden, **options)

    head.sample = spy
    _generate(model, "next_scale", SamplingConfig(guidance_scale=4.0, seed=0))
    constant, seen[:] = list(seen), []
    _generate(model, "next_scale", SamplingConfig(guidance_scale=4.0, guidance_schedule="linear", seed=0))
    scales = len(SPECS["next_scale"].scales)
    assert constant == [4.0] * scales
    assert seen == pytest.approx([config.guidance_at(k, scales) for k in range(scales)]) and seen[-1] == 4.0


@pytest.mark.parametrize("bad", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"guidance_schedule": "cubic"}])
def test_bad_sampling_options(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


def test_next_scale_without_teacher_inputs_is_an_error():
    model = tiny_model("next_scale")
    with pytest.raises(ValueError, match="teacher_inputs"):
        generate(model, PROMPTS, "image", SamplingConfig())


RVQ = ModalitySpec("audio", 8, 3, 0, (5, 1, 1), pattern="delay", token_shape=(5,), medium="audio")


def _compile_case(case):
    """(model, modality, teacher_inputs) in float64, where near-ties cannot flip a code."""
    if case == "delay":  # multi-codebook codes with -100 holes: the hole mask is part of the step
        torch.manual_seed(0)
        config = MMARConfig(TINY, [RVQ], {"text": HeadChoice(), "audio": HeadChoice("next_token")})
        return MMAR(config).double().eval(), "audio", None
    if case == "spans":  # a 160-slot cache: the loop runs one graph for 128 slots, then one for all 160
        torch.manual_seed(0)
        from dataclasses import replace

        spec = ModalitySpec("image", 16, 1, 0, (1, 12, 12))
        config = MMARConfig(replace(TINY, max_len=256), [spec], {"text": HeadChoice(), "image": HeadChoice("next_token")})
        return MMAR(config).double().eval(), "image", None
    model = tiny_model(case, torch.float64)
    if case != "next_scale":
        return model, "image", None
    # the real multi-scale tokenizer, so its teacher inputs are traced inside the compiled scale step
    from tokenizers_vq import TOKENIZERS

    spec = SPECS["next_scale"]
    tokenizer_class = TOKENIZERS["multiscale_vq"]
    tokenizer = tokenizer_class(tokenizer_class.Config(image_size=16, base_channels=8, scales=(1, 2, 3, 4),
                                                       codebook_size=spec.codebook_size,
                                                       code_dim=spec.latent_channels)).double().eval()
    return model, "image", tokenizer.teacher_inputs


@pytest.mark.slow
@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("case", ["next_token", "next_scale", "flow_matching", "delay", "spans"])
def test_compiled_decode_step_equals_eager(case):
    """The whole decode step compiled (inductor, C++ on CPU; one tiny model per head kind) draws what
    the eager step draws for the same seed, under a guidance schedule with top-k / top-p, and again
    once warm (steps after the first skip dynamo's non-differentiating guards)."""
    from mmar.bench import outside_compiled_share

    model, modality, teacher = _compile_case(case)
    config = SamplingConfig(guidance_scale=3.0, guidance_schedule="linear", top_k=6, top_p=0.9, seed=5,
                            head_options={"num_steps": 3} if case == "flow_matching" else {})

    def run(compile_step):
        return generate(model, PROMPTS, modality, config, teacher_inputs=teacher, compile_step=compile_step)

    eager, compiled = run(False), run(True)
    if case == "flow_matching":
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(compiled, eager)
    assert torch.equal(run(True), compiled)
    assert 0 <= outside_compiled_share(lambda: run(True)) < 1  # the loop spends time inside the compiled step

    # A prompt one byte shorter fills the same cache and spans: the compiled graphs serve it as they are.
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    shorter = [PROMPTS[0][:-1], PROMPTS[1]]
    compiled = generate(model, shorter, modality, config, teacher_inputs=teacher, compile_step=True)
    assert counters["stats"]["unique_graphs"] == graphs
    eager = generate(model, shorter, modality, config, teacher_inputs=teacher, compile_step=False)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_recompute_equals_eager():
    # The recomputed forward compiled with dynamic shapes (what `mmar bench --compile` times the cache against).
    model = tiny_model("next_token", torch.float64)
    config = SamplingConfig(guidance_scale=3.0, seed=5)
    eager = generate(model, PROMPTS, "image", config)
    assert torch.equal(eager, generate(model, PROMPTS, "image", config, use_cache=False, compile_step=True))
