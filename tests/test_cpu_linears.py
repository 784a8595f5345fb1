"""The compiled decode step's CPU backend: linear layers of few rows as reductions, the others on
weights packed for oneDNN (`mmar/cpu_linears.py`).

That the whole compiled step draws what the eager one draws is tested per head kind in
test_generate.py (`test_compiled_decode_step_equals_eager`); these test the parts."""

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SPECS, fake_teacher_inputs, tiny_model
from mmar import cpu_linears
from mmar.bench import has_cxx_compiler
from mmar.cpu_linears import PACKED_LINEAR_WEIGHT, PACKED_LINEAR_WORK, SMALL_LINEAR_ROWS, pack_weights, packed_linear, route_linears, small_linear
from mmar.generate import SamplingConfig, generate

PROMPTS = [torch.tensor(list(b"a red circle")), torch.tensor(list(b"blue"))]

needs_onednn = pytest.mark.skipif(not cpu_linears.packing_available(), reason="this torch build has no oneDNN")


@pytest.fixture
def any_weight(monkeypatch):
    """Tiny layers packed too (the weight threshold lowered to 0)."""
    monkeypatch.setattr(cpu_linears, "PACKED_LINEAR_WEIGHT", 0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 16), (1, 3, 16), (2, 1, 4, 16)])
def test_small_linear_equals_linear(shape, bias):
    torch.manual_seed(0)
    x, weight = torch.randn(shape, dtype=torch.float64), torch.randn(24, 16, dtype=torch.float64)
    b = torch.randn(24, dtype=torch.float64) if bias else None
    out = small_linear(x, weight, b)
    assert out.shape == (*shape[:-1], 24)
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-12, atol=1e-12)


@needs_onednn
def test_linears_are_routed_by_their_rows_work_and_weight():
    torch.manual_seed(0)
    layer, small = nn.Linear(256, 1024), nn.Linear(64, 64)
    assert layer.weight.numel() >= PACKED_LINEAR_WEIGHT > small.weight.numel()
    routed, graphs = [], []

    def backend(graph, inputs):  # what the CPU backend does before inductor, then run the graph as it is
        routed.append(route_linears(graph))
        graphs.append(graph)
        return graph.forward

    few = torch.randn(1, SMALL_LINEAR_ROWS, 256)
    middle = torch.randn(SMALL_LINEAR_ROWS + 1, 256)  # few multiply-adds: BLAS
    many = torch.randn(2, PACKED_LINEAR_WORK // (256 * 1024 * 2), 256)
    many_on_small = torch.randn(PACKED_LINEAR_WORK // (64 * 64), 64)  # a small weight: BLAS
    compiled = torch.compile(lambda a, b, c, d: [layer(a), layer(b), layer(c), small(d)], backend=backend,
                             fullgraph=True)
    with torch.no_grad():
        out = compiled(few, middle, many, many_on_small)
        expected = [layer(few), layer(middle), layer(many), small(many_on_small)]
    assert routed == [(1, 1)]
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert [targets.count(target) for target in (small_linear, torch._C._nn.linear, packed_linear)] == [1, 2, 1]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(12, 16), (2, 9, 16)])
def test_packed_linear_equals_linear_and_uses_the_packed_copy(shape, bias, any_weight):
    torch.manual_seed(0)
    layer = nn.Linear(16, 24, bias=bias)
    x = torch.randn(shape)
    assert pack_weights(layer) == 1 and pack_weights(layer) == 0  # packed once, then kept
    entry = cpu_linears._PACKED[layer.weight.data_ptr()]
    assert entry.source() is layer.weight and entry.weight.is_mkldnn
    with torch.no_grad():
        out = packed_linear(x, layer.weight, layer.bias)
    assert out.shape == (*shape[:-1], 24)
    torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_changed_weight_never_runs_on_its_stale_packed_copy(any_weight):
    torch.manual_seed(0)
    layer, x = nn.Linear(16, 24, bias=False), torch.randn(12, 16)
    pack_weights(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(x).square().sum().backward()
    optimizer.step()  # an in-place update: the version counter moves
    with torch.no_grad():
        torch.testing.assert_close(packed_linear(x, layer.weight, None), layer(x), rtol=1e-5, atol=1e-5)
        assert pack_weights(layer) == 1  # packed afresh
        layer.load_state_dict({"weight": torch.randn(24, 16)})  # a checkpoint loaded in place
        torch.testing.assert_close(packed_linear(x, layer.weight, None), layer(x), rtol=1e-5, atol=1e-5)
        assert pack_weights(layer) == 1


@needs_onednn
def test_a_packed_copy_goes_with_its_weight(any_weight):
    layer = nn.Linear(16, 24, bias=False)
    pack_weights(layer)
    key = layer.weight.data_ptr()
    assert key in cpu_linears._PACKED
    del layer
    gc.collect()
    assert key not in cpu_linears._PACKED


def test_only_large_float32_cpu_linear_weights_are_packed():
    model = nn.Sequential(nn.Embedding(512, 512), nn.Linear(512, 512).double(), nn.Linear(512, 512),
                          nn.Linear(16, 8))
    assert pack_weights(model) == (1 if cpu_linears.packing_available() else 0)


@pytest.mark.slow
@needs_onednn
@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")
def test_a_compiled_generation_runs_on_packed_weights(monkeypatch, any_weight):
    """Every larger linear layer of a float32 model on its packed copy (the work and weight thresholds
    lowered to 0, so a tiny model has some): the compiled generation calls them and draws what eager
    draws."""
    model = tiny_model("next_scale")
    config = SamplingConfig(guidance_scale=3.0, seed=5)
    teacher = fake_teacher_inputs(SPECS["next_scale"])
    eager = generate(model, PROMPTS, "image", config, teacher_inputs=teacher)
    used = []

    def valid(entry, weight):  # counts the calls that ran on a packed copy
        packed = check(entry, weight)
        used.append(packed is not None)
        return packed

    check = cpu_linears._valid
    monkeypatch.setattr(cpu_linears, "_valid", valid)
    monkeypatch.setattr(cpu_linears, "PACKED_LINEAR_WORK", 0)
    torch._dynamo.reset()  # graphs of this shape compiled by another test route by the usual threshold
    try:
        compiled = generate(model, PROMPTS, "image", config, teacher_inputs=teacher, compile_step=True)
    finally:
        torch._dynamo.reset()
    assert used.count(True) >= 2 * model.transformer.config.num_layers  # prefill and scales, every layer
    assert torch.equal(compiled, eager)
