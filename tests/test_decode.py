"""The compiled decode step's CPU backend: linear layers of few rows as reductions (`mmar/decode.py`).

That the whole compiled step draws what the eager one draws is tested per head kind in
test_generate.py (`test_compiled_decode_step_equals_eager`); these test the parts."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmar.decode import SMALL_LINEAR_ROWS, route_small_linears, small_linear


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 16), (1, 3, 16), (2, 1, 4, 16)])
def test_small_linear_equals_linear(shape, bias):
    torch.manual_seed(0)
    x, weight = torch.randn(shape, dtype=torch.float64), torch.randn(24, 16, dtype=torch.float64)
    b = torch.randn(24, dtype=torch.float64) if bias else None
    out = small_linear(x, weight, b)
    assert out.shape == (*shape[:-1], 24)
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-12, atol=1e-12)


def test_only_linears_of_few_rows_are_routed():
    torch.manual_seed(0)
    layer = nn.Linear(16, 24)
    routed, graphs = [], []

    def backend(graph, inputs):  # what the CPU backend does before inductor, then run the graph as it is
        routed.append(route_small_linears(graph))
        graphs.append(graph)
        return graph.forward

    few, many = torch.randn(1, 2, 16), torch.randn(SMALL_LINEAR_ROWS + 1, 16)
    compiled = torch.compile(lambda a, b: (layer(a).sum(), layer(b).sum()), backend=backend, fullgraph=True)
    with torch.no_grad():
        out = compiled(few, many)
        expected = (layer(few).sum(), layer(many).sum())
    assert routed == [1]
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(small_linear) == 1 and targets.count(torch._C._nn.linear) == 1
    torch.testing.assert_close(out, expected)
