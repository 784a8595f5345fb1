"""The mmar Gradio demo: every pipeline under a folder, one tab per modality it makes, and captions.

    mmar demo [DIR] [--host 127.0.0.1] [--port 7860] [--out runs/demo]
    python demos/app.py [DIR] ...

DIR is a pipeline folder or a folder of runs (default `runs`); a model picker offers each pipeline
found. A pipeline's tabs come from `Pipeline.modalities`: one per modality, whose output component
is picked from the medium by `VIEWS` (the one table here that knows media), its head's own
controls (`demos.controls`), example prompts from its training data's grammar, a progress bar per
position or scale, the elapsed time, the `mmar generate` line that repeats the result and the
files to download. A many-modality pipeline adds "let the model choose"; one with a medium a
user can upload (`VIEWS[...].upload`) adds a caption tab. With no pipeline found the page says
how to train one.

Safe by default: binds 127.0.0.1, analytics off, every value checked in the handler (a
`gr.Error` says what to change; the page's own limits are not trusted), a bounded queue, one
generation at a time per model (a Gradio concurrency group per model and a lock around its
KV cache), `max_file_size` on uploads, and files served only from the output folder: Gradio
serves `allowed_paths`, its upload folder and its examples cache, and all three are put under
`--out` (`GRADIO_TEMP_DIR`, `GRADIO_EXAMPLES_CACHE`); the pipelines themselves are blocked.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it reads this at import

import gradio as gr  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from demos.catalog import QUICKSTART, Entry, describe, example_prompts, load_entries  # noqa: E402
from demos.controls import (CAPTION_TEMPERATURE, COMMON, MAX_SEED, NUM_SAMPLES, SEED, Control, check,  # noqa: E402
                            check_prompt, checked_values, head_controls, prompt_budget, reproduce_command,
                            sampling_arguments, shared_controls)
from mmar.images import from_pil  # noqa: E402
from mmar.media import default_name, save_media, writer  # noqa: E402

logger = logging.getLogger(__name__)


class View(NamedTuple):
    component: str  # the gradio class that shows a result of this medium
    element: str  # the HTML element a browser shows it in (what the browser test waits for)
    many: bool  # shows every sample (a gallery) rather than the first
    upload: str = ""  # the gradio input class for uploading one to caption ("" when not captionable here)


VIEWS: dict[str, View] = {
    "image": View("Gallery", "img", True, upload="Image"),
    "video": View("Video", "video", False),
    "audio": View("Audio", "audio", False),
    "voxels": View("Model3D", "canvas", False),
}
FILES_ONLY = View("", "", False)  # a medium without a view yet: its files are still offered to download
CSS = ".mmar-result img { image-rendering: pixelated; }"  # 32x32 samples shown large stay crisp


@dataclass
class DemoConfig:
    root: str = "runs"  # a pipeline folder or a folder of runs
    out: str = "runs/demo"  # every file the demo writes, and the only folder it serves
    host: str = "127.0.0.1"
    port: int | None = 7860  # None: the first free port from 7860
    queue_size: int = 16  # requests waiting at most; more are refused with "Queue is full"
    max_file_size: str = "5mb"  # largest upload
    device: str = "cpu"


class Demo(NamedTuple):
    blocks: gr.Blocks
    entries: list[Entry]
    out: Path


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_") or "model"


def _as_sample(item: Any) -> Any:
    """A pipeline output -> what `mmar.media` writers take (PIL images back to (3, H, W) in [-1, 1], exactly)."""
    return from_pil(item) if isinstance(item, Image.Image) else item


def _writer_options(save: Callable, tokenizer) -> dict[str, Any]:
    """The writer's keyword options the tokenizer's config carries (an audio `sample_rate`, a video `fps`)."""
    import inspect

    config = getattr(tokenizer, "config", None)
    names = list(inspect.signature(save).parameters)[2:]  # after (sample, path)
    return {name: getattr(config, name) for name in names if hasattr(config, name)}


def _request_folder(out: Path) -> Path:
    folder = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    return folder


def _make_generate(entry: Entry, modality: str | None, controls: list[Control], media: list[str], out: Path):
    """The handler of one tab: (progress, prompt, num, seed, random, *head values) -> the tab's outputs."""
    pipe = entry.pipeline

    def generate(progress=gr.Progress(), prompt="", num_samples=1, seed=0, random_seed=False, *values):
        started = time.perf_counter()
        try:
            if random_seed is True:
                seed = secrets.randbelow(MAX_SEED + 1)
            prompt = check_prompt(pipe, prompt, modality)
            chosen = checked_values([*COMMON, *controls], [num_samples, seed, *values])
        except ValueError as error:
            raise gr.Error(str(error), title="Check the settings") from None
        report = lambda name, done, total: progress((done, total), desc=f"{name}: drawing", unit="steps")  # noqa: E731
        with entry.lock:
            try:
                outputs = pipe(prompt, modality=modality, progress=report, **sampling_arguments(chosen))
            except ValueError as error:  # the pipeline's own checks, should a value pass ours
                raise gr.Error(str(error), title="Check the settings") from None
            names = pipe.last_modalities
        folder = _request_folder(out)
        files = []
        for i, (item, name) in enumerate(zip(outputs, names)):
            medium = pipe.spec(name).medium
            options = _writer_options(writer(medium).save, pipe.tokenizers[name])
            files.append(str(save_media(medium, _as_sample(item), folder / default_name(medium, i), **options)))
        seconds = time.perf_counter() - started
        command = reproduce_command(str(entry.path), modality, prompt, chosen, controls, str(folder))
        results = []
        for medium in media:
            mine = [(path, name) for path, name in zip(files, names) if pipe.spec(name).medium == medium]
            view = VIEWS.get(medium, FILES_ONLY)
            if view.component:
                results.append(mine if view.many else (mine[0][0] if mine else None))
        made = ", ".join(f"{names.count(n)} x {n} ({pipe.head_of(n)})" for n in dict.fromkeys(names))
        info = f"**{seconds:.2f} s** for {made}; seed {chosen['seed']}; files in `{folder}`"
        return (*results, files, info, command, chosen["seed"])

    return generate


def _make_caption(entry: Entry, readable: list[str]):
    pipe = entry.pipeline

    def caption(path, modality, temperature, seed):
        try:
            if modality not in readable:
                raise ValueError(f"caption with one of {', '.join(readable)}; got {modality!r}")
            temperature, seed = check(CAPTION_TEMPERATURE, temperature), check(SEED, seed)
            if not path:
                raise ValueError("upload an image to caption first")
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"{Path(path).name} is not a readable image ({error}); upload a PNG or JPEG") from None
        except ValueError as error:
            raise gr.Error(str(error), title="Check the input") from None
        with entry.lock:
            return pipe.caption(image, modality=modality, temperature=temperature, seed=seed)[0]

    return caption


def _control_component(control: Control):
    if control.kind == "choice":
        return gr.Radio(list(control.choices), value=control.default, label=control.label, info=control.info)
    return gr.Slider(control.minimum, control.maximum, value=control.default, step=control.step,
                     label=control.label, info=control.info)


def _generate_tab(entry: Entry, index: int, modality: str | None, out: Path) -> None:
    pipe = entry.pipeline
    names = [modality] if modality else pipe.modalities
    controls = head_controls(pipe, modality) if modality else shared_controls(pipe, names)
    media = list(dict.fromkeys(pipe.spec(n).medium for n in names))
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="prompt", lines=2, max_length=prompt_budget(pipe, modality),
                                placeholder="what to generate")
            button = gr.Button("Generate", variant="primary")
            examples = example_prompts(pipe, names)
            if examples:
                gr.Examples([[p] for p in examples], inputs=[prompt], label="example prompts")
            num = _control_component(NUM_SAMPLES)
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="seed")
                random_seed = gr.Checkbox(value=False, label="random seed")
            values = [_control_component(c) for c in controls]
        with gr.Column(scale=1):
            views = []
            for medium in media:
                view = VIEWS.get(medium, FILES_ONLY)
                if view.component:
                    options = {"columns": 4, "format": "png"} if view.many else {}
                    component = getattr(gr, view.component)
                    views.append(component(label=f"generated {medium}", elem_classes=["mmar-result"], **options))
            files = gr.File(label="download", file_count="multiple", interactive=False)
            info = gr.Markdown()
            command = gr.Code(label="repeat it: mmar generate", language="shell", interactive=False)
    api = f"generate_{index}_{_slug(modality or 'any')}"
    event = dict(fn=_make_generate(entry, modality, controls, media, out), inputs=[prompt, num, seed, random_seed, *values],
                 outputs=[*views, files, info, command, seed], concurrency_limit=1, concurrency_id=f"model_{index}")
    button.click(api_name=api, **event)
    prompt.submit(api_visibility="private", **event)


def _caption_tab(entry: Entry, index: int, readable: list[str]) -> None:
    medium = entry.pipeline.spec(readable[0]).medium
    with gr.Row():
        with gr.Column():
            upload = getattr(gr, VIEWS[medium].upload)(label=f"{medium} to caption", type="filepath")
            modality = gr.Dropdown(readable, value=readable[0], label="read by", visible=len(readable) > 1)
            temperature = _control_component(CAPTION_TEMPERATURE)
            seed = gr.Number(value=0, precision=0, label="seed")
            button = gr.Button("Caption", variant="primary")
        text = gr.Textbox(label="caption", interactive=False)
    button.click(_make_caption(entry, readable), inputs=[upload, modality, temperature, seed], outputs=[text],
                 api_name=f"caption_{index}", concurrency_limit=1, concurrency_id=f"model_{index}")


def _pipeline_page(entry: Entry, index: int, out: Path) -> None:
    pipe = entry.pipeline
    with gr.Tabs():
        if len(pipe.modalities) > 1:
            with gr.Tab("let the model choose"):
                _generate_tab(entry, index, None, out)
        for modality in pipe.modalities:
            with gr.Tab(f"{modality} ({pipe.head_of(modality)})"):
                _generate_tab(entry, index, modality, out)
        readable = [m for m in pipe.modalities if VIEWS.get(pipe.spec(m).medium, FILES_ONLY).upload]
        if readable:
            with gr.Tab("caption"):
                _caption_tab(entry, index, readable)


def build_app(config: DemoConfig) -> Demo:
    """Load every pipeline under `config.root` and lay out the page (nothing is served yet)."""
    out = Path(config.out).resolve()
    gradio_files = out / ".gradio"  # uploads and Gradio's caches live inside the served folder
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_files / "uploads")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(gradio_files / "examples")
    out.mkdir(parents=True, exist_ok=True)
    entries = load_entries(config.root, config.device)
    loaded = [e for e in entries if e.pipeline is not None]
    with gr.Blocks(title="mmar demo", analytics_enabled=False) as blocks:
        gr.Markdown("# mmar: one model, many modalities")
        if not loaded:
            gr.Markdown(f"No trained pipeline found under `{config.root}`. Train one (about 6 minutes on a CPU), "
                        f"then start the demo on it:\n\n```\n{QUICKSTART}\nmmar demo runs\n```")
        else:
            picker = gr.Dropdown([e.label for e in loaded], value=loaded[0].label, label="model")
            gr.Markdown("\n".join(f"- {describe(e)}" for e in entries))
            pages = []
            for index, entry in enumerate(loaded):
                with gr.Column(visible=index == 0) as page:
                    _pipeline_page(entry, index, out)
                pages.append(page)
            picker.change(lambda label: [gr.update(visible=e.label == label) for e in loaded], inputs=[picker],
                          outputs=pages, api_visibility="private", queue=False)
    return Demo(blocks, entries, out)


def launch(demo: Demo, config: DemoConfig, block: bool = True):
    """Serve the page with the safe settings above; `block=False` returns at once (tests)."""
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this address can use the demo", config.host)
    os.environ["GRADIO_TEMP_DIR"] = str(demo.out / ".gradio" / "uploads")  # this demo's, if another was built since
    blocked = [str(e.path.resolve()) for e in demo.entries]
    demo.blocks.queue(max_size=config.queue_size, default_concurrency_limit=1, api_open=False)
    return demo.blocks.launch(server_name=config.host, server_port=config.port, share=False, inbrowser=False,
                              prevent_thread_lock=not block, allowed_paths=[str(demo.out)], blocked_paths=blocked,
                              max_file_size=config.max_file_size, show_error=False, ssr_mode=False,
                              enable_monitoring=False, run_history=False, mcp_server=False, quiet=not block, css=CSS)


def config_from(args: argparse.Namespace) -> DemoConfig:
    """`mmar demo` / `python demos/app.py` arguments (see mmar.cli.add_demo_arguments) -> a checked DemoConfig."""
    given = {field: value for field, value in vars(args).items() if field in DemoConfig.__dataclass_fields__
             and value is not None}
    config = DemoConfig(**given)
    if config.queue_size < 1:
        raise ValueError(f"--queue-size must be at least 1, got {config.queue_size}")
    if config.port is not None and not 0 < config.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {config.port}")
    return config


def main(argv: list[str] | None = None) -> int:
    from mmar.cli import add_demo_arguments

    parser = argparse.ArgumentParser(prog="demos/app.py", description="The mmar Gradio demo over every pipeline in DIR.")
    add_demo_arguments(parser)
    try:
        config = config_from(parser.parse_args(argv))
    except ValueError as error:
        parser.error(str(error))
    launch(build_app(config), config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
