"""The Gradio demo: built in-process for a tiny pipeline of every head and a joint one, driven through
gradio_client against a real server on 127.0.0.1, and through headless Debian chromium (Playwright)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmar.model import MMAR, HeadChoice, MMARConfig
from mmar.pipeline import Pipeline, modality_spec
from mmar.transformer import TransformerConfig
from tokenizers_vq import TOKENIZERS

gr = pytest.importorskip("gradio")  # the demo extra; installed by `make test`
from demos.app import VIEWS, DemoConfig, build_app, launch  # noqa: E402
from demos.catalog import find_pipelines  # noqa: E402

HEAD_TOKENIZER = {"next_token": "image_vq", "next_scale": "multiscale_vq", "flow_matching": "image_kl"}
SMALL_TOKENIZER = {"image_vq": {"base_channels": 8}, "multiscale_vq": {"base_channels": 8},
                   "image_kl": {"block_out_channels": (8, 16, 16), "norm_num_groups": 8}}
SMALL_HEAD = {"flow_matching": {"width": 32, "num_layers": 1, "num_steps": 2}}
PROMPT = "a red circle at the top left"


def small_pipeline(heads: dict[str, str]) -> Pipeline:
    """Random weights, real tokenizer classes (small), one modality per {name: head}, shapes as the source."""
    torch.manual_seed(0)
    tokenizers, specs, routing = {}, [], {"text": HeadChoice()}
    for name, head in heads.items():
        cls = TOKENIZERS[HEAD_TOKENIZER[head]]
        tokenizers[name] = cls(cls.Config(**SMALL_TOKENIZER[HEAD_TOKENIZER[head]])).eval()
        specs.append(modality_spec(name, tokenizers[name], (3, 32, 32)))
        routing[name] = HeadChoice(head, SMALL_HEAD.get(head, {}))
    backbone = TransformerConfig(dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_len=256)
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    model = MMAR(MMARConfig(backbone, specs, routing)).eval()
    return Pipeline(model, {"text": text, **tokenizers}, {name: "shapes" for name in heads})


def media_pipeline() -> Pipeline:
    """Random weights, small real tokenizers: a clip (video_vq, 5 frames of 16x16) and a sound (audio_codec, 0.5 s)."""
    torch.manual_seed(0)
    video = TOKENIZERS["video_vq"](TOKENIZERS["video_vq"].Config(base_channels=8, channel_multipliers=(1, 1, 2))).eval()
    audio = TOKENIZERS["audio_codec"](TOKENIZERS["audio_codec"].Config(
        base_channels=4, max_channels=16, dilations=(1,), latent_dim=8, codebook_size=16)).eval()
    specs = [modality_spec("video", video, (5, 3, 16, 16)), modality_spec("audio", audio, (1, 8000), "delay")]
    backbone = TransformerConfig(dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_len=256)
    routing = {"text": HeadChoice(), "video": HeadChoice("next_token"), "audio": HeadChoice("next_token")}
    model = MMAR(MMARConfig(backbone, specs, routing)).eval()
    text = TOKENIZERS["text"](TOKENIZERS["text"].Config())
    return Pipeline(model, {"text": text, "video": video, "audio": audio}, {"video": "moving_shapes", "audio": "notes"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_runs")
    for head in HEAD_TOKENIZER:
        small_pipeline({"image": head}).save_pretrained(root / head / "pipeline")
    media_pipeline().save_pretrained(root / "media" / "pipeline")
    small_pipeline({"image_token": "next_token", "image_scale": "next_scale", "image_flow": "flow_matching"}
                   ).save_pretrained(root / "joint" / "pipeline")
    shutil.copytree(root / "next_token" / "pipeline", root / "next_token" / "ar_run" / "pipeline")  # same weights
    (root / "broken" / "pipeline").mkdir(parents=True)
    (root / "broken" / "pipeline" / "pipeline.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def demo(runs, tmp_path_factory):
    return build_app(DemoConfig(root=str(runs), out=str(tmp_path_factory.mktemp("demo_out")), queue_size=1))


def endpoints(demo) -> dict:
    return {fn.api_name: fn for fn in demo.blocks.fns.values() if fn.api_visibility == "public"}


def entry_index(demo, label: str) -> int:
    return [e.label for e in demo.entries if e.pipeline is not None].index(label)


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


def call(demo, api: str, prompt: str = PROMPT, num: int = 1, seed: int = 0, random_seed: bool = False, **changes):
    """Run one generate endpoint in-process with its page defaults, except `changes` (by control label)."""
    fn = endpoints(demo)[api]
    values = [changes.get(c.label, c.value) for c in fn.inputs[4:]]
    return fn.fn(NoProgress(), prompt, num, seed, random_seed, *values)


# --- in-process --------------------------------------------------------------------------------

def test_import_mmar_never_imports_gradio():
    probe = subprocess.run([sys.executable, "-c", "import sys, mmar, mmar.cli, mmar.pipeline, mmar.media; "
                            "mmar.cli.build_parser().parse_args(['demo', 'runs']); "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'demos')))"],
                           capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_every_pipeline_is_found_once_and_a_broken_one_is_listed(runs, demo):
    assert [p.relative_to(runs).as_posix() for p in find_pipelines(runs)] == [
        "broken/pipeline", "flow_matching/pipeline", "joint/pipeline", "media/pipeline", "next_scale/pipeline",
        "next_token/pipeline"]
    broken = [e for e in demo.entries if e.pipeline is None]
    assert [e.label for e in broken] == ["broken/pipeline"] and "not valid JSON" in broken[0].error
    assert find_pipelines(runs / "joint" / "pipeline") == [runs / "joint" / "pipeline"]


def test_the_app_has_a_tab_per_modality_and_head_controls_per_head(demo):
    apis = endpoints(demo)
    for entry in demo.entries:
        if entry.pipeline is None:
            continue
        i = entry_index(demo, entry.label)
        expected = {f"generate_{i}_{m}" for m in entry.pipeline.modalities}
        if any(entry.pipeline.spec(m).medium == "image" for m in entry.pipeline.modalities):
            expected.add(f"caption_{i}")
        if len(entry.pipeline.modalities) > 1:
            expected.add(f"generate_{i}_any")
        assert expected == {name for name in apis if name.endswith(f"_{i}") or f"_{i}_" in name}, entry.label
        for modality in entry.pipeline.modalities:
            labels = [c.label for c in apis[f"generate_{i}_{modality}"].inputs]
            head = entry.pipeline.head_of(modality)
            assert labels[:4] == ["prompt", "number of samples", "seed", "random seed"]
            assert ("ODE steps" in labels) == (head == "flow_matching"), (head, labels)
            assert ("top-k" in labels and "top-p" in labels) == (head != "flow_matching"), (head, labels)
    joint = entry_index(demo, "joint/pipeline")
    chooser = [c.label for c in apis[f"generate_{joint}_any"].inputs]
    assert chooser[4:] == ["CFG scale", "CFG schedule", "temperature"]  # the controls every head shares
    config = json.dumps(demo.blocks.get_config_file())
    assert "let the model choose" in config
    assert "example prompts" in config  # from the shapes grammar (CHECKERS["shapes"].prompts)


def test_video_and_audio_appear_and_make_files_that_open(demo):
    """Video and audio came after the demo: they get their tabs, controls and files with no demo change."""
    import av
    import soundfile

    i = entry_index(demo, "media/pipeline")
    *_, files, info, command, seed = call(demo, f"generate_{i}_video", "a red circle moving left")
    assert [Path(f).suffix for f in files] == [".mp4"] and "--modality video" in command
    with av.open(files[0]) as container:
        frames = [frame for frame in container.decode(video=0)]
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (16, 16)
    *_, files, info, command, seed = call(demo, f"generate_{i}_audio", "a sine playing C4 once")
    assert [Path(f).suffix for f in files] == [".wav"] and "--modality audio" in command
    audio, rate = soundfile.read(files[0])
    assert rate == 16000 and audio.shape[0] == 8000


def test_no_pipeline_shows_the_quickstart_command(tmp_path):
    empty = build_app(DemoConfig(root=str(tmp_path / "nothing"), out=str(tmp_path / "out")))
    assert empty.entries == [] and "mmar quickstart" in json.dumps(empty.blocks.get_config_file())


@pytest.mark.parametrize("change, needle", [
    (dict(prompt="x" * 400), "shorten it"),
    (dict(prompt="   "), "the prompt is empty"),
    (dict(num=9), "number of samples is 9; lower it"),
    (dict(seed=-1), "seed is -1; raise it"),
    (dict(seed=1.5), "seed must be a whole number"),
    ({"CFG scale": 99}, "CFG scale is 99; lower it"),
    ({"CFG schedule": "cubic"}, "CFG schedule must be one of constant, linear"),
    ({"top-k": 10_000}, "top-k is 10000; lower it"),
    ({"temperature": "hot"}, "temperature must be a number"),
])
def test_the_handler_checks_every_value(demo, change, needle):
    api = f"generate_{entry_index(demo, 'next_token/pipeline')}_image"
    with pytest.raises(gr.Error, match=needle):
        call(demo, api, **change)


@pytest.mark.parametrize("label, modality", [("next_token/pipeline", "image"), ("flow_matching/pipeline", "image"),
                                             ("joint/pipeline", None)])
def test_the_shown_command_makes_the_same_files(demo, tmp_path, label, modality):
    from mmar.cli import main

    api = f"generate_{entry_index(demo, label)}_{modality or 'any'}"
    *_, files, info, command, seed = call(demo, api, num=2, seed=3)
    assert seed == 3 and "s** for 2 x" in info
    words = shlex.split(command)
    assert words[:2] == ["mmar", "generate"] and ("--steps" in words) == (label == "flow_matching/pipeline")
    words[words.index("--out") + 1] = str(tmp_path / "again")
    assert main(words[1:]) == 0
    for path in files:
        assert Image.open(path).tobytes() == Image.open(tmp_path / "again" / Path(path).name).tobytes()


def test_random_seed_is_drawn_and_reported(demo):
    api = f"generate_{entry_index(demo, 'next_scale/pipeline')}_image"
    *_, command, seed = call(demo, api, random_seed=True)
    assert isinstance(seed, int) and f"--seed {seed} " in command


def test_progress_follows_every_position_or_scale(demo):
    for entry in demo.entries:
        if entry.pipeline is None or len(entry.pipeline.modalities) > 1:
            continue
        pipe, seen = entry.pipeline, []
        pipe(PROMPT, modality="image", progress=lambda *step: seen.append(step), **(
            {"num_steps": 1} if pipe.head == "flow_matching" else {}))
        spec = pipe.spec("image")
        total = len(spec.scales) if spec.scales else spec.num_tokens  # a scale per step, else a position
        assert seen == [("image", done, total) for done in range(0, total + 1)], entry.label  # 0: before the prefill


def test_media_writers_get_the_tokenizers_own_settings():
    from types import SimpleNamespace

    from demos.app import _writer_options
    from mmar.media import WRITERS

    audio = SimpleNamespace(config=SimpleNamespace(sample_rate=24000, fps=30))
    assert _writer_options(WRITERS["audio"].save, audio) == {"sample_rate": 24000}
    assert _writer_options(WRITERS["video"].save, audio) == {"fps": 30}
    assert _writer_options(WRITERS["image"].save, audio) == {}


# --- a real server, driven by gradio_client --------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo):
    config = DemoConfig(root="unused", out=str(demo.out), port=_free_port(), queue_size=1)
    launch(demo, config, block=False)
    yield f"http://127.0.0.1:{config.port}/"
    demo.blocks.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def _first_path(gallery) -> str:
    item = gallery[0]
    return item["image"] if isinstance(item, dict) else item[0] if isinstance(item, (list, tuple)) else item


def test_the_server_binds_localhost_only(server, demo):
    assert server.startswith("http://127.0.0.1:") and demo.blocks.server_name == "127.0.0.1"
    assert demo.blocks.max_file_size == 5 * 1024 * 1024 and demo.blocks.analytics_enabled is False


def test_a_generation_comes_back_as_png_files(client, demo):
    gallery, files, info, command, seed = client.predict(
        PROMPT, 2, 0, False, 3.0, "constant", 1.0, 0, 1.0,
        api_name=f"/generate_{entry_index(demo, 'next_token/pipeline')}_image")
    assert len(gallery) == 2 and len(files) == 2 and seed == 0 and "mmar generate" in command
    with Image.open(_first_path(gallery)) as image:
        assert image.format == "PNG" and image.size == (32, 32)


def test_a_caption_comes_back_as_text(client, demo, tmp_path):
    picture = tmp_path / "in.png"
    Image.new("RGB", (32, 32), "red").save(picture)
    from gradio_client import handle_file

    text = client.predict(handle_file(str(picture)), "image_token", 0.0, 0,
                          api_name=f"/caption_{entry_index(demo, 'joint/pipeline')}")
    assert isinstance(text, str)


@pytest.mark.parametrize("arguments, needle", [
    (("x" * 400, 1, 0, False, 3.0, "constant", 1.0, 0, 1.0), "shorten it"),
    ((PROMPT, 1, -5, False, 3.0, "constant", 1.0, 0, 1.0), "seed is -5"),
    ((PROMPT, 1, 0, False, 99.0, "constant", 1.0, 0, 1.0), "99"),
])
def test_bad_values_come_back_as_errors(client, demo, arguments, needle):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=needle):
        client.predict(*arguments, api_name=f"/generate_{entry_index(demo, 'next_token/pipeline')}_image")


def test_only_the_output_folder_is_served(server, runs, demo, client):
    import httpx

    made = next(p for p in demo.out.rglob("000.png") if ".gradio" not in p.parts)
    assert httpx.get(f"{server}gradio_api/file={made}").status_code == 200
    weights = runs / "next_token" / "pipeline" / "model" / "model.safetensors"
    for path in (weights, Path(__file__).resolve(), Path("/etc/passwd")):
        assert httpx.get(f"{server}gradio_api/file={path}").status_code == 403, path


def test_uploads_are_capped_and_kept_under_the_output_folder(server, demo):
    import httpx

    small = httpx.post(f"{server}gradio_api/upload", files={"files": ("a.png", b"x" * 1000)})
    assert small.status_code == 200 and Path(small.json()[0]).resolve().is_relative_to(demo.out)
    large = httpx.post(f"{server}gradio_api/upload", files={"files": ("b.png", b"x" * (6 * 1024 * 1024))})
    assert large.status_code == 413, large.text


def test_a_full_queue_answers_at_once(client, demo):
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError, Status

    index = entry_index(demo, "next_token/pipeline")
    api, arguments = f"/generate_{index}_image", (PROMPT, 1, 0, False, 3.0, "constant", 1.0, 0, 1.0)
    lock = [e for e in demo.entries if e.pipeline is not None][index].lock

    def wait_for(job, codes, seconds=60):
        deadline = time.monotonic() + seconds
        while job.status().code not in codes:
            assert time.monotonic() < deadline, job.status()
            time.sleep(0.05)

    with lock:  # the model is busy: the first request runs (and waits), the second queues, the third is refused
        running = client.submit(*arguments, api_name=api)
        wait_for(running, {Status.PROCESSING})
        waiting = client.submit(*arguments, api_name=api)
        wait_for(waiting, {Status.IN_QUEUE})
        started = time.monotonic()
        with pytest.raises((QueueError, AppError), match="(?i)queue is full"):
            client.submit(*arguments, api_name=api).result(timeout=30)
        assert time.monotonic() - started < 30
    assert running.result(timeout=120)[-1] == 0 and waiting.result(timeout=120)[-1] == 0


# --- a real browser ----------------------------------------------------------------------------

def test_a_browser_generates_and_sees_the_result(server, demo, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian chromium is not installed: run `make system-data` (as root; it runs "
                    "`apt-get install -y chromium`), the set-up `make test` does")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `make venv` installs it (the test extra, playwright==1.65.2)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server, wait_until="networkidle", timeout=60_000)
            page.get_by_label("prompt").first.fill(PROMPT)
            page.get_by_role("button", name="Generate").first.click()
            first = next(e.pipeline for e in demo.entries if e.pipeline is not None)  # the page shown first
            for medium in dict.fromkeys(first.spec(m).medium for m in first.modalities):
                element = VIEWS[medium].element  # img, video, audio: each served from --out
                page.locator(f'{element}[src*="gradio_api/file="]').first.wait_for(state="visible", timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            if os.environ.get("MMAR_DEMO_SCREENSHOT"):  # the README's picture: MMAR_DEMO_SCREENSHOT=demos/assets/demo.png
                page.screenshot(path=os.environ["MMAR_DEMO_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    with Image.open(tmp_path / "demo.png") as shot:
        assert shot.width >= 1280
