"""What a demo user may set for one modality, how each value is checked, and the command that repeats it.

The controls come from the pipeline, never from a list of modality names: every head takes the
guidance scale and schedule and a temperature (`mmar.generate.SamplingConfig`); a discrete head
(its `target_dtype` is long) adds top-k, top-p and the guidance plausibility constraint; a head whose `sample` takes `num_steps` (the
flow head's ODE steps) adds that, with the trained head's own default. Every control starts at
the pipeline's stored sampling default (tuned after training), so the first click gives what
`mmar generate` gives without options. A head added later gets
its controls the same way, with no change here. Nothing in this file imports gradio: the app
turns a `ValueError` from `check` into a `gr.Error`, so the same checks serve the browser, the
API and the tests.
"""

from __future__ import annotations

import inspect
import math
import shlex
from typing import Any, NamedTuple

import torch

from heads import HEADS
from mmar.generate import GUIDANCE_SCHEDULES

MAX_SAMPLES = 8  # per request: bounds one request's CPU time
MAX_SEED = 2**31 - 1
MAX_GUIDANCE = 20.0
MAX_TEMPERATURE = 5.0
MAX_STEPS = 200  # flow ODE steps per position


class Control(NamedTuple):
    name: str  # keyword of `Pipeline.__call__` (a head option such as num_steps goes through **head_options)
    label: str  # what the page calls it
    kind: str  # "float", "int" or "choice"
    default: Any
    minimum: float = 0
    maximum: float = 0
    step: float = 1
    flag: str = ""  # the `mmar generate` option that sets it
    choices: tuple[str, ...] = ()
    info: str = ""


NUM_SAMPLES = Control("num_samples", "number of samples", "int", 1, 1, MAX_SAMPLES, 1, "--num")
SEED = Control("seed", "seed", "int", 0, 0, MAX_SEED, 1, "--seed")
COMMON = (NUM_SAMPLES, SEED)  # every generate tab has these, before its head's controls
CAPTION_TEMPERATURE = Control("temperature", "temperature", "float", 0.0, 0.0, MAX_TEMPERATURE, 0.05, "--temperature",
                              info="0 is greedy")


def head_controls(pipeline, modality: str) -> list[Control]:
    """The sampling controls `modality`'s head uses, in page order."""
    head = pipeline.head_of(modality)
    cls = HEADS[head]
    stored = pipeline.sampling_defaults(modality)
    controls = [
        Control("guidance_scale", "CFG scale", "float", stored["guidance_scale"], 0.0, MAX_GUIDANCE, 0.1, "--cfg",
                info="classifier-free guidance; 1 turns it off"),
        Control("guidance_schedule", "CFG schedule", "choice", stored["guidance_schedule"], flag="--cfg-schedule",
                choices=tuple(GUIDANCE_SCHEDULES), info="linear grows from 1 to the scale over positions / scales"),
        Control("temperature", "temperature", "float", stored["temperature"], 0.0, MAX_TEMPERATURE, 0.05,
                "--temperature", info="0 is greedy" if cls.target_dtype == torch.long else "scale of the starting noise"),
    ]
    if cls.target_dtype == torch.long:  # a softmax over codes: top-k and nucleus filtering apply
        codebook = pipeline.spec(modality).codebook_size
        controls += [
            Control("top_k", "top-k", "int", stored["top_k"], 0, codebook, 1, "--top-k", info="0 keeps every code"),
            Control("top_p", "top-p", "float", stored["top_p"], 0.05, 1.0, 0.05, "--top-p",
                    info="nucleus: 1 keeps every code"),
            Control("plausibility", "plausibility", "float", stored["plausibility"], 0.0, 1.0, 0.01, "--plausibility",
                    info="with CFG, only codes at least this fraction as likely as the top one under the prompt"),
        ]
    if "num_steps" in inspect.signature(cls.sample).parameters:
        default = int(getattr(pipeline.model.heads[modality].config, "num_steps", 25))
        controls.append(Control("num_steps", "ODE steps", "int", min(default, MAX_STEPS), 1, MAX_STEPS, 1, "--steps",
                                info="velocity-network solves per position"))
    return controls


def shared_controls(pipeline, modalities: list[str]) -> list[Control]:
    """The controls every one of `modalities` uses (the "let the model choose" tab: any of them may come)."""
    per_modality = [head_controls(pipeline, m) for m in modalities]
    names = set.intersection(*({c.name for c in controls} for controls in per_modality))
    return [c for c in per_modality[0] if c.name in names]


def check(control: Control, value: Any) -> Any:
    """One value from the page or the API -> the checked value; a ValueError says what to change."""
    if control.kind == "choice":
        if value not in control.choices:
            raise ValueError(f"{control.label} must be one of {', '.join(control.choices)}; got {value!r}")
        return value
    bounds = f"between {_number(control.minimum)} and {_number(control.maximum)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{control.label} must be a number {bounds}; got {value!r}")
    if control.kind == "int":
        if value != int(value):
            raise ValueError(f"{control.label} must be a whole number {bounds}; got {value!r}")
        value = int(value)
    if not control.minimum <= value <= control.maximum:
        change = "lower" if value > control.maximum else "raise"
        raise ValueError(f"{control.label} is {_number(value)}; {change} it to a value {bounds}")
    return value if control.kind == "int" else float(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_prompt(pipeline, prompt: Any, modality: str | None) -> str:
    """The prompt, or a ValueError saying what to change (too long for the model's context, empty, not text)."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text; got {type(prompt).__name__}")
    size, budget = len(prompt.encode("utf-8", errors="surrogateescape")), prompt_budget(pipeline, modality)
    if size > budget:
        raise ValueError(f"the prompt is {size} bytes; this model reads at most {budget}: shorten it")
    pipeline.encode_prompts([prompt], modality)  # the pipeline's own checks (an empty prompt)
    return prompt


def prompt_budget(pipeline, modality: str | None) -> int:
    """The longest prompt, in bytes, that leaves room for `modality` (every modality when None)."""
    names = [modality] if modality else pipeline.modalities
    return pipeline.model.config.transformer.max_len - max(pipeline.spec(m).num_tokens for m in names) - 3


def checked_values(controls: list[Control], values: list[Any]) -> dict[str, Any]:
    """Controls and their values from the page -> {name: checked value} (the first bad one raises)."""
    if len(values) != len(controls):
        raise ValueError(f"expected {len(controls)} control values, got {len(values)}")
    return {control.name: check(control, value) for control, value in zip(controls, values)}


def sampling_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """Checked values -> keyword arguments of `Pipeline.__call__` (num_steps is a head option of the same name)."""
    arguments = {name: value for name, value in values.items() if name != "num_samples"}
    arguments["num_images_per_prompt"] = values["num_samples"]
    return arguments


def reproduce_command(model_dir: str, modality: str | None, prompt: str, values: dict[str, Any],
                      controls: list[Control], out: str) -> str:
    """The exact `mmar generate` line that makes the same files (same seed, same settings) in `out`."""
    words = ["mmar", "generate", "--model", model_dir]
    if modality:
        words += ["--modality", modality]
    words += ["--prompt", prompt]
    for control in [*COMMON, *controls]:
        value = values[control.name]
        words += [control.flag, str(value)]  # str(float) is repr: it reads back as the same float
    return shlex.join([*words, "--out", out])
