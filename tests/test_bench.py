"""`mmar bench` building blocks on a tiny backbone: the figures exist and the call counts are right."""

import torch

from mmar.bench import bench_cache, bench_heads, bench_training
from mmar.transformer import TransformerConfig

CPU = torch.device("cpu")
TINY = TransformerConfig(dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_len=512)


def test_call_counts_per_image_follow_the_head():
    rows = {row["head"]: row for row in bench_heads(TINY, CPU, repeats=1, batches=(1,))}
    # next-token and flow: one prefill, then one call per remaining token of the 8x8 grid.
    assert rows["next_token"]["transformer_calls_per_image"] == 64
    assert rows["flow_matching"]["transformer_calls_per_image"] == 64
    # next-scale: the prefill predicts scale 1, then one call per further scale (1, 2, 3, 4, 6, 8).
    assert rows["next_scale"]["transformer_calls_per_image"] == 6
    from heads.flow_matching import FlowMatchingConfig

    assert rows["flow_matching"]["velocity_net_calls_per_image"] == 64 * FlowMatchingConfig().num_steps
    assert "velocity_net_calls_per_image" not in rows["next_token"]
    assert all(row["images_per_s"] > 0 for row in rows.values())


def test_outside_share_is_everything_without_a_compiled_step():
    from mmar.bench import outside_compiled_share
    from mmar.generate import SamplingConfig, generate
    from conftest import tiny_model

    model = tiny_model("next_token")
    share = outside_compiled_share(lambda: generate(model, [torch.tensor([1, 2])], "image", SamplingConfig(),
                                                    compile_step=False))
    assert share == 1.0  # eager: the whole loop runs outside any compiled region


def test_outside_share_counts_only_compiled_regions_inside_the_loop():
    """A compiled call before the loop (the prompt's compiled prefill) is not the loop's time."""
    from torch.profiler import record_function

    from mmar.bench import outside_compiled_share

    double = torch.compile(lambda x: x * 2, backend="eager", fullgraph=True)
    x = torch.ones(64)

    def run():
        for _ in range(20):
            double(x)  # before the loop
        with record_function("mmar::fill"):
            for _ in range(20):
                x.sin()  # the loop: eager only

    assert outside_compiled_share(run) == 1.0


def test_cache_and_training_figures():
    rows = bench_cache(TINY, CPU, repeats=1)
    assert [row["tokens"] for row in rows] == [64, 256]
    assert all(row["speedup"] > 0 and row["cached_tokens_per_s"] > 0 and not row["compiled"] for row in rows)
    training = bench_training(TINY, CPU, steps=1, batch=4)
    assert training["tokens_per_s"] > 0 and training["precision"] == "fp32"


def test_bench_runs_without_diffusers():
    """`mmar bench` needs only the light stack (the GPU machine has no diffusers): block its import."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['diffusers'] = None; import torch; "
            "from mmar.bench import bench_heads; from mmar.transformer import TransformerConfig; "
            "rows = bench_heads(TransformerConfig(dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_len=512), "
            "torch.device('cpu'), repeats=1, batches=(1,)); "
            "print(sorted(r['head'] for r in rows)); print('diffusers' in sys.modules and sys.modules['diffusers'] is not None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["['flow_matching', 'next_scale', 'next_token']", "False"]
