"""CUDA-only checks (marker `gpu`; skipped cleanly without CUDA): the paths the CPU suite cannot
reach — generation on the device, the compiled decode step there, bf16 training in the bench."""

import pytest
import torch

from conftest import SPECS, fake_teacher_inputs, tiny_model, tiny_pipeline
from mmar.generate import SamplingConfig, generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
PROMPTS_BYTES = [torch.tensor(list(b"a red circle")), torch.tensor(list(b"hi"))]


@pytest.mark.parametrize("head", ["next_token", "next_scale"])
def test_cached_equals_recomputed_on_cuda(head):
    model = tiny_model(head, torch.float64).to(CUDA)
    prompts = [p.to(CUDA) for p in PROMPTS_BYTES]  # prompts may live on the device: generate packs on the CPU
    teacher = fake_teacher_inputs(SPECS[head], torch.float64) if head == "next_scale" else None
    config = SamplingConfig(guidance_scale=3.0, seed=1)
    cached = generate(model, prompts, "image", config, teacher_inputs=teacher, compile_step=False)
    recomputed = generate(model, prompts, "image", config, teacher_inputs=teacher, use_cache=False, compile_step=False)
    assert cached.device.type == "cuda" and torch.equal(cached, recomputed)


@pytest.mark.parametrize("head", ["next_token", "next_scale", "flow_matching"])
def test_compiled_decode_step_equals_eager_on_cuda(head):
    # CUDA compiles by default (mode="reduce-overhead": each step replays as a CUDA graph); twice, so
    # the second generation replays graphs recorded by the first (the kept tokens must be clones).
    model = tiny_model(head, torch.float64).to(CUDA)
    prompts = [p.to(CUDA) for p in PROMPTS_BYTES]
    teacher = fake_teacher_inputs(SPECS[head], torch.float64) if head == "next_scale" else None
    config = SamplingConfig(guidance_scale=3.0, seed=2, head_options={"num_steps": 3} if head == "flow_matching" else {})
    eager = generate(model, prompts, "image", config, teacher_inputs=teacher, compile_step=False)
    for _ in range(2):
        compiled = generate(model, prompts, "image", config, teacher_inputs=teacher)
        if head == "flow_matching":
            torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(compiled, eager)


def test_pipeline_on_cuda_gives_images_reproducibly():
    pipeline = tiny_pipeline("next_token").to(CUDA)
    first = pipeline(["a red circle at the top left"], num_images_per_prompt=2, seed=0)
    again = pipeline(["a red circle at the top left"], num_images_per_prompt=2, seed=0)
    assert len(first) == 2 and first[0].size == (32, 32)
    assert [image.tobytes() for image in first] == [image.tobytes() for image in again]


def test_bench_on_cuda_reports_bf16_training_and_compiled_rows():
    from mmar.bench import run_bench

    results = run_bench(quick=True, device="cuda")
    assert results["training"]["precision"] == "bf16 autocast" and 0 < results["training"]["mfu_vs_989_tflops"] < 1
    assert {row["compiled"] for row in results["kv_cache"]} == {False, True}
    assert all(row["compiled_images_per_s"] > 0 and 0 <= row["outside_compiled_share"] <= 1 for row in results["heads"])
