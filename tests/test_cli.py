"""The `mmar` command: bad input is one line and exit code 2; generation is reproducible."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import tiny_pipeline


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mmar.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pipeline"
    tiny_pipeline("next_token").save_pretrained(path)
    return path


def _assert_one_line_error(result, needle):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_generate_writes_a_grid_and_files_reproducibly(model_dir, tmp_path):
    args = ["generate", "--model", str(model_dir), "--prompt", "a red circle at the top left", "--num", "2", "--seed", "0",
            "--cfg", "3", "--temperature", "0.9", "--top-k", "8", "--top-p", "0.9"]
    first = run(*args, "--out", str(tmp_path / "a.png"))
    assert first.returncode == 0, first.stderr
    again = run(*args, "--out", str(tmp_path / "b.png"))
    assert Image.open(tmp_path / "a.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()
    folder = run(*args, "--out", str(tmp_path / "each"))
    assert folder.returncode == 0 and sorted(p.name for p in (tmp_path / "each").iterdir()) == ["000.png", "001.png"]
    assert Image.open(tmp_path / "each" / "000.png").size == (32, 32)
    assert again.returncode == 0


@pytest.mark.parametrize("extra, needle", [
    (["--num", "0"], "--num: must be at least 1"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
])
def test_bad_sampling_arguments(model_dir, tmp_path, extra, needle):
    result = run("generate", "--model", str(model_dir), "--prompt", "a red circle", *extra, "--out", str(tmp_path / "x.png"))
    _assert_one_line_error(result, needle)


def test_bad_prompts(model_dir, tmp_path):
    out = str(tmp_path / "x.png")
    _assert_one_line_error(run("generate", "--model", str(model_dir), "--prompt", "  ", "--out", out), "empty")
    _assert_one_line_error(run("generate", "--model", str(model_dir), "--prompt", "x" * 500, "--out", out), "context")


def test_undecodable_prompt_bytes(model_dir, tmp_path):
    result = subprocess.run([sys.executable.encode(), b"-m", b"mmar.cli", b"generate", b"--model", str(model_dir).encode(),
                             b"--prompt", b"a red \xff circle", b"--out", str(tmp_path / "x.png").encode()],
                            capture_output=True, text=True, timeout=300)
    _assert_one_line_error(result, "valid Unicode")


def test_missing_and_incomplete_model(tmp_path):
    _assert_one_line_error(run("generate", "--model", str(tmp_path / "none"), "--prompt", "a"), "no pipeline folder")
    (tmp_path / "half").mkdir()
    _assert_one_line_error(run("generate", "--model", str(tmp_path / "half"), "--prompt", "a"), "pipeline.json")


@pytest.mark.parametrize("item, needle", [("optim.stepz=1", "unknown config key"), ("optim.steps=x", "expects int")])
def test_bad_overrides(model_dir, tmp_path, item, needle):
    tokenizer = model_dir / "tokenizers" / "image"
    result = run("train", "--tokenizer", str(tokenizer), "--out", str(tmp_path / "o"), "--set", item)
    _assert_one_line_error(result, needle)


def test_help_answers_without_the_training_stack():
    result = run("generate", "--help")
    assert result.returncode == 0 and "--cfg" in result.stdout and "--top-p" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, mmar.cli; mmar.cli.build_parser(); "
                            "print(any(m.startswith(('accelerate', 'trainers', 'gradio', 'diffusers')) for m in sys.modules))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"


def test_demo_script_writes_a_grid(model_dir, tmp_path):
    from demos.text_to_image import main

    out = tmp_path / "demo.png"
    assert main(["--model", str(model_dir), "--num", "2", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 32
    assert main(["--model", str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.parametrize("head", ["next_scale", "flow_matching"])
def test_generate_needs_no_head_flag(head, tmp_path):
    path = tmp_path / head
    tiny_pipeline(head).save_pretrained(path)
    result = run("generate", "--model", str(path), "--prompt", "a blue square at the center", "--num", "2",
                 "--out", str(tmp_path / "each"))
    assert result.returncode == 0, result.stderr
    assert [Image.open(tmp_path / "each" / f"00{i}.png").size for i in range(2)] == [(32, 32)] * 2


def test_eval_sweeps_flow_steps_into_a_plot(model_dir, tmp_path):
    path = tmp_path / "flow"
    tiny_pipeline("flow_matching").save_pretrained(path)
    result = run("eval", "--model", str(path), "--steps", "1", "3", "--num-prompts", "2", "--per-prompt", "1",
                 "--plot", str(tmp_path / "steps.png"), "--out", str(tmp_path / "steps.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "steps.json").read_text())
    assert sorted(report["by_steps"]) == ["1", "3"] and all(r["count"] == 2 for r in report["by_steps"].values())
    assert Image.open(tmp_path / "steps.png").size[0] > 100
    # A sweep needs a flow head; a plot needs a sweep.
    _assert_one_line_error(run("eval", "--model", str(model_dir), "--steps", "1", "2"), "flow_matching")
    _assert_one_line_error(run("eval", "--model", str(path), "--steps", "2", "--plot", str(tmp_path / "p.png")),
                           "at least two")


@pytest.mark.parametrize("args, needle", [
    (["generate", "--model", "m", "--prompt", "a", "--steps", "0"], "must be at least 1"),
    (["eval", "--model", "m", "--steps"], "expected at least one argument"),
    (["generate", "--prompt", "a"], "--model"),
    (["quickstart", "--head", "diffusion"], "invalid choice"),
])
def test_argument_errors_are_one_line(args, needle):
    _assert_one_line_error(run(*args), needle)


def test_bench_compile_without_a_cxx_compiler_is_a_one_line_error(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "CXX"}
    result = subprocess.run([sys.executable, "-m", "mmar.cli", "bench", "--quick", "--compile", "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, env={**env, "PATH": str(tmp_path)})
    _assert_one_line_error(result, "needs a C++ compiler")


def test_warmup_reporter_tells_the_first_compile_and_a_later_one(monkeypatch, capsys):
    from mmar import cli

    # the prefill and step 2 took 20 s (warm-up); step 5 stalled 4.8 s
    clock = iter([0.0, 5.0, 20.0, 20.1, 20.2, 25.0, 25.1])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    report = cli._warmup_reporter()
    for done in range(0, 7):
        report("image", done, 64)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "image: compiling the prompt's prefill and the decode step on first use (warm-up) ..."
    assert lines[1] == "image: warm-up done in 20.0 s; drawing 62 more steps"
    assert lines[2] == ("image: step 5 of 64 compiled another graph of the step (a longer cache span, or several "
                        "steps a call) in 4.8 s")
    assert len(lines) == 3  # steady steps say nothing


def test_warmup_reporter_tells_a_next_scale_warmup(monkeypatch, capsys):
    """Compiled next-scale reports scale 1 and then all six at once: one graph for scales 2.."""
    from mmar import cli

    clock = iter([0.0, 20.0, 140.0])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    report = cli._warmup_reporter()
    for done in (0, 1, 6):
        report("image", done, 6)
    assert capsys.readouterr().err.splitlines() == [
        "image: compiling the prompt's prefill and the decode step on first use (warm-up) ...",
        "image: warm-up done in 140.0 s"]
