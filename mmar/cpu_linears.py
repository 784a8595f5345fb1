"""How a compiled CPU graph computes its linear layers (`decode`'s CPU backend rewrites them).

A BLAS call (MKL, what `F.linear` runs) is built for many rows, and each call re-packs the weight
matrix into its own tile layout before multiplying. Decoding multiplies few rows by every weight:

- at most `SMALL_LINEAR_ROWS` rows (a decode step at small batch), `small_linear`: the product
  written as a sum over the input features, which inductor builds as a loop of its own;
- much work on a large weight (a later scale of a next-scale step, a prompt's prefill, from
  d=256 or so), `packed_linear`: oneDNN's product on a weight packed into oneDNN's layout once,
  ahead of the call (`pack_weights`), and kept while the weight is unchanged;
- the rest (a step at batch 16, small weights), BLAS: oneDNN's fixed cost a call, or BLAS's cheap
  re-packing of a weight that stays in cache, leaves packing no gain.

The packed copy is checked on every call against its source weight (the same live parameter, at
the same address, with no in-place update since: its version counter), so a training step or a
loaded checkpoint never runs on a stale copy; a weight without a valid copy takes `F.linear`.

Where the idea comes from (the code is written here): inductor's own weight prepacking when it
freezes a model (`fx_passes/mkldnn_fusion.py`), which bakes the packed weight into the graph as a
constant and so assumes the weights never change; here the packed copies live outside the graph.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: a compiled CPU linear layer of at most this many rows runs as a reduction (`small_linear`)
SMALL_LINEAR_ROWS = 8

#: ... and one of at least this many multiply-adds (rows x inputs x outputs) on a packed weight
#: (`packed_linear`), if the weight is large too; between the two, BLAS. A oneDNN call costs ~11 us
#: more than a BLAS call before any work, and the operator's way through Python ~7 us more: at 2-4 M
#: multiply-adds (~50-100 us of work) packing's gain no longer pays for them.
PACKED_LINEAR_WORK = 8 * 2**20

#: ... the weight's entries: 2^18 is 1 MiB in float32, one core's L2 cache here. Below it MKL
#: re-packs a weight cheaply, and packing measured no faster (d=192, every weight below it: 0.96-0.99x
#: a batch-1 next-scale image), above it 1.05x (d=256, where only the MLP's input weight reaches it).
PACKED_LINEAR_WEIGHT = 2**18


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for few rows, written as a product summed over the input features, for inductor
    to build as a loop of its own instead of a BLAS call.

    A decode step multiplies a few rows (batch 1 with guidance: 2) by every weight matrix, and a
    BLAS call is built for many. Inductor's loop reads each weight row once and keeps it in L1 for
    all rows (outputs outer, rows inner, features vectorized). Measured on CPU, one thread, a step's
    17 weight matrices (d=192, 4 layers): 171 us at 2 rows against 390 us through BLAS, 265 vs 457
    at 4, 473 vs 581 at 8; from ~12 rows BLAS wins."""
    from torch._inductor import inductor_prims

    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    rows = inductor_prims.force_stride_order(rows, (rows.shape[1], 1))  # computed once, not inside the sum
    out = (weight[:, None, :] * rows[None]).sum(-1).t()  # (N, M, K) summed over K -> (M, N)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])  # (..., N)


class _Packed(NamedTuple):
    source: weakref.ref  # the parameter packed
    version: int  # its version counter when packed
    weight: torch.Tensor  # oneDNN's layout (an opaque mkldnn tensor)


#: packed copies by the address of their source weight's data
_PACKED: dict[int, _Packed] = {}


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available()


def pack_weights(module: nn.Module) -> int:
    """Pack every float32 CPU `nn.Linear` weight of `module` of at least PACKED_LINEAR_WEIGHT entries
    whose packed copy is missing or stale -> how many were packed. Cheap when nothing changed (a
    dict lookup per layer): call it before every compiled generation."""
    if not packing_available():
        return 0
    packed = 0
    for layer in module.modules():
        weight = getattr(layer, "weight", None) if isinstance(layer, nn.Linear) else None
        if (weight is None or weight.device.type != "cpu" or weight.dtype != torch.float32
                or weight.numel() < PACKED_LINEAR_WEIGHT):  # never routed to `packed_linear`
            continue
        if _valid(_PACKED.get(weight.data_ptr()), weight) is None:
            _pack(weight)
            packed += 1
    return packed


def _pack(weight: nn.Parameter) -> None:
    key = weight.data_ptr()

    def forget(source: weakref.ref) -> None:  # the parameter is gone: drop its copy (unless replaced since)
        entry = _PACKED.get(key)
        if entry is not None and entry.source is source:
            del _PACKED[key]

    with torch.no_grad():
        copy = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)  # (N, K), oneDNN's layout
    _PACKED[key] = _Packed(weakref.ref(weight, forget), weight._version, copy)


def _valid(entry: _Packed | None, weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy of `weight` if `entry` still describes it, else None."""
    if entry is None:
        return None
    source = entry.source()
    if (source is None or source.data_ptr() != weight.data_ptr() or source._version != entry.version
            or source.shape != weight.shape or source.stride() != weight.stride()):
        return None
    return entry.weight


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    packed = _valid(_PACKED.get(weight.data_ptr()), weight)
    if packed is None or x.dtype != torch.float32:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")  # (M, N)
    return out.view(*x.shape[:-1], weight.shape[0])  # (..., N)


def _packed_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])  # (..., N)


# An operator of its own (not `torch.library.custom_op`, whose Python wrapper costs ~2 us more a call):
# inductor calls it as an opaque kernel, and the graph passes the parameter, never the packed copy.
_LIBRARY = torch.library.Library("mmar", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIBRARY.impl("packed_linear", _packed_linear, "CPU")
_LIBRARY.impl("packed_linear", _packed_linear_shape, "Meta")
packed_linear = torch.ops.mmar.packed_linear


def route_linears(graph: torch.fx.GraphModule) -> tuple[int, int]:
    """Have each linear layer of a traced (dynamo) CPU graph call `small_linear` (at most
    SMALL_LINEAR_ROWS rows, static shapes) or `packed_linear` (float32, a weight of at least
    PACKED_LINEAR_WEIGHT entries, and PACKED_LINEAR_WORK multiply-adds or rows not known until run
    time) -> how many of each."""
    small = packed = 0
    for node in graph.graph.find_nodes(op="call_function", target=torch._C._nn.linear):
        x = node.args[0].meta.get("example_value") if isinstance(node.args[0], torch.fx.Node) else None  # (..., K)
        if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
            continue
        static = all(isinstance(size, int) for size in x.shape)  # not a dynamic graph
        outputs = node.meta["example_value"].shape[-1]  # N
        if static and x.numel() <= SMALL_LINEAR_ROWS * x.shape[-1]:
            node.target = small_linear
            small += 1
        elif (x.dtype == torch.float32 and packing_available() and x.shape[-1] * outputs >= PACKED_LINEAR_WEIGHT
              and (not static or x.numel() * outputs >= PACKED_LINEAR_WORK)):  # weight entries, multiply-adds
            x, weight, bias = (list(node.args) + [node.kwargs.get("bias")])[:3]
            node.target, node.args, node.kwargs = packed_linear, (x, weight, bias), {}
            packed += 1
    graph.recompile()
    return small, packed
