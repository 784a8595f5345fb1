"""A text-to-anything pipeline: the tokenizers, the MMAR model and the routing, saved as one folder.

    pipeline.json            format, modalities, routing, and the SHA-256 of every weights file
    model/                   config.json + model.safetensors (the EMA weights after training)
    tokenizers/<name>/       config.json + model.safetensors, one per modality (text included)

`from_pretrained` verifies the hashes, so a truncated or altered file is a clear error; nothing is
unpickled. `pipe(prompt, modality=...)` returns that modality's objects (PIL images for images,
decoded tensors for other media, which `mmar.media` writes to files); with `modality=None` a
one-modality pipeline uses its modality and a many-modality one lets the text head choose.
`pipe.caption(images)` returns text from the text head. The head type comes from the saved
routing, so callers never say which head a pipeline uses.

A pipeline also records, per modality, the data config it was trained on (`data`: `mmar eval`
rebuilds the held-out split from it) and its sampling defaults (`sampling`: the guidance scale,
schedule, temperature, top-k and top-p that scored best on held-out prompts after training).
`pipe(prompt)` uses them for every setting not given; `SAMPLING_DEFAULTS` fills the rest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from mmar.config import load_json, save_json, validate
from mmar.files import check_finite, file_hashes, verify_hashes
from mmar.generate import SamplingConfig, choose_modality, generate, generate_text
from mmar.images import from_pil, to_pil
from mmar.layout import ModalitySpec
from mmar.model import MMAR
from mmar.packing import Segment
from tokenizers_vq import Tokenizer, load_tokenizer

FORMAT = "mmar-pipeline/1"
#: the settings a pipeline may store per modality, and what is used when it stores none
SAMPLING_DEFAULTS = {"guidance_scale": 3.0, "guidance_schedule": "constant", "temperature": 1.0, "top_k": 0,
                     "top_p": 1.0, "plausibility": 0.0}


@dataclass
class PipelineManifest:
    """pipeline.json: what the folder holds and the SHA-256 of every file in it."""

    format: str
    modalities: list[str]
    routing: dict[str, str]  # modality (text included) -> head
    components: dict[str, str]  # "model" and each tokenizer's name -> its subfolder
    sha256: dict[str, str]  # file (relative) -> hash
    sources: dict[str, str] = field(default_factory=dict)  # modality -> the data source it was trained on
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> its training data config
    sampling: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> tuned sampling defaults

    def check(self) -> None:
        for name, settings in self.sampling.items():
            unknown = sorted(set(settings) - set(SAMPLING_DEFAULTS))
            if unknown:
                raise ValueError(f"sampling.{name} has unknown settings {unknown}; known: {sorted(SAMPLING_DEFAULTS)}")
            SamplingConfig(**{**SAMPLING_DEFAULTS, **settings})  # types and ranges
        if self.format != FORMAT:
            raise ValueError(f"unknown format {self.format!r} (expected {FORMAT}): written by another mmar version?")
        if "model" not in self.components:
            raise ValueError('components has no "model" entry')
        for path in [*self.components.values(), *self.sha256]:
            if Path(path).is_absolute() or ".." in Path(path).parts:
                raise ValueError(f"path {path!r} must stay inside the pipeline folder")


def modality_spec(name: str, tokenizer: Tokenizer, data_shape: tuple[int, ...], pattern: str = "flat") -> ModalitySpec:
    """Describe a trained tokenizer's token stream for the layout (grids always (t, h, w))."""
    shape = tuple(tokenizer.token_shape(data_shape))
    scales = tuple(tuple(s) for s in getattr(tokenizer, "scales", ()))
    if scales:
        grid = (1, *scales[-1])
    else:
        # (h, w) -> (1, h, w); a sequence (T,) (audio frames) runs along the time axis: (T, 1, 1)
        grid = (shape[0], 1, 1) if len(shape) == 1 else (1,) * (3 - len(shape)) + shape
    return ModalitySpec(name, tokenizer.codebook_size, tokenizer.num_codebooks, tokenizer.latent_channels, grid, scales,
                        pattern=pattern, token_shape=shape, data_shape=tuple(data_shape), medium=tokenizer.modality)


def _to_output(medium: str, item: torch.Tensor) -> Any:
    """One decoded item -> what a user holds: a PIL image for images, else the tensor (mmar.media writes it)."""
    return to_pil(item) if medium == "image" else item.cpu()


class Pipeline:
    def __init__(self, model: MMAR, tokenizers: dict[str, Tokenizer], sources: dict[str, str] | None = None, *,
                 data: dict[str, dict] | None = None, sampling: dict[str, dict] | None = None) -> None:
        """`sources`: the data source each modality was trained on (picks its checker in `mmar eval`);
        `data`: each modality's training data config; `sampling`: each modality's sampling defaults."""
        missing = sorted(set(model.config.heads) - set(tokenizers))
        if missing:
            raise ValueError(f"the pipeline lacks tokenizers for {missing}")
        self.model, self.tokenizers, self.sources = model, tokenizers, dict(sources or {})
        self.data, self.sampling = dict(data or {}), dict(sampling or {})
        self.last_modalities: list[str] = []  # which modality each item of the last call is

    @property
    def modalities(self) -> list[str]:
        """What this pipeline can generate (every routed modality but text), in layout order."""
        return [name for name in self.model.layout.modalities if name in self.model.config.heads]

    @property
    def modality(self) -> str:
        """The generated modality of a one-modality pipeline (an error when there are several)."""
        if len(self.modalities) != 1:
            raise ValueError(f"this pipeline generates {self.modalities}; say which with modality=...")
        return self.modalities[0]

    def head_of(self, modality: str) -> str:
        return self.model.config.heads[self._check(modality)].name

    @property
    def head(self) -> str:
        """The head of a one-modality pipeline."""
        return self.head_of(self.modality)

    def spec(self, modality: str) -> ModalitySpec:
        return self.model.layout.modalities[self._check(modality)]

    def _check(self, modality: str) -> str:
        if modality not in self.modalities:
            raise ValueError(f"this pipeline has no modality {modality!r}; it has {', '.join(self.modalities)}")
        return modality

    def sampling_defaults(self, modality: str) -> dict[str, Any]:
        """The settings `pipe(..., modality=modality)` uses when not told: tuned ones, else SAMPLING_DEFAULTS."""
        return {**SAMPLING_DEFAULTS, **self.sampling.get(self._check(modality), {})}

    def save_options(self, modality: str) -> dict[str, Any]:
        """What `mmar.media.save_media` needs to know about this modality's items: the audio sample rate."""
        rate = getattr(self.tokenizers[self._check(modality)].config, "sample_rate", None)
        return {"sample_rate": rate} if self.spec(modality).medium == "audio" and rate else {}

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def to(self, device: torch.device | str) -> "Pipeline":
        self.model.to(device)
        for tokenizer in self.tokenizers.values():
            tokenizer.to(device)
        return self

    # --- save / load ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the pipeline folder atomically (a temporary folder renamed into place).

        Every weight is checked finite first: a diverged model is refused, never exported.
        """
        check_finite(self.model.state_dict(), "the model")
        for name, tokenizer in self.tokenizers.items():
            check_finite(tokenizer.state_dict(), f"the {name} tokenizer")
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        temporary = directory.with_name(f".tmp-{directory.name}")
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            self.model.save_pretrained(temporary / "model")
            for name, tokenizer in self.tokenizers.items():
                tokenizer.save_pretrained(temporary / "tokenizers" / name)
            files = sorted(str(p.relative_to(temporary)) for p in temporary.rglob("*") if p.is_file())
            manifest = PipelineManifest(
                format=FORMAT, modalities=self.modalities,
                routing={name: choice.name for name, choice in self.model.config.heads.items()},
                sources=dict(self.sources), data=dict(self.data), sampling=dict(self.sampling),
                components={"model": "model", **{name: f"tokenizers/{name}" for name in self.tokenizers}},
                sha256=file_hashes(temporary, files))
            save_json(manifest, temporary / "pipeline.json")
            if directory.exists():
                shutil.rmtree(directory)
            temporary.replace(directory)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu") -> "Pipeline":
        """Load a pipeline folder: schema-checked pipeline.json, verified hashes, finite weights."""
        directory = Path(directory)
        manifest_path = directory / "pipeline.json"
        if not directory.is_dir():
            raise FileNotFoundError(f"no pipeline folder at {directory}; train one with `mmar quickstart` or `mmar train`")
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} has no pipeline.json: not a pipeline folder, or an incomplete one")
        manifest = load_json(PipelineManifest, manifest_path, partial=False)
        verify_hashes(directory, manifest.sha256)
        model = MMAR.from_pretrained(directory / manifest.components["model"])
        tokenizers = {name: load_tokenizer(directory / path) for name, path in manifest.components.items() if name != "model"}
        for name, tokenizer in tokenizers.items():
            validate(tokenizer.config, f"tokenizers/{name}/config.json: ")
        check_finite(model.state_dict(), f"{directory}/model/model.safetensors")
        for name, tokenizer in tokenizers.items():
            check_finite(tokenizer.state_dict(), f"{directory}/tokenizers/{name}/model.safetensors")
        missing = [name for name in ["text", *model.layout.modalities] if name not in tokenizers]
        if missing:
            raise ValueError(f"{manifest_path}: components lack the tokenizer(s) {missing} the model needs")
        return cls(model, tokenizers, manifest.sources, data=manifest.data, sampling=manifest.sampling).to(device)

    # --- generation ---------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str], modality: str | None = None) -> list[torch.Tensor]:
        """Validate and byte-encode prompts; a ValueError saying what is wrong."""
        longest = max(self.spec(m).num_tokens for m in ([modality] if modality else self.modalities))
        budget = self.model.config.transformer.max_len - longest - 3  # <bos>, <m>, </m>
        encoded = []
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("the prompt is empty; describe what to generate, e.g. 'a red circle at the top left'")
            size = len(prompt.encode("utf-8", errors="surrogateescape"))
            if size > budget:
                raise ValueError(f"the prompt is {size} bytes; this model's context leaves room for {budget}")
            encoded.append(self.tokenizers["text"].encode(prompt))  # (n,)
        return encoded

    def choose(self, prompts: list[str], *, temperature: float = 1.0, seed: int = 0) -> list[str]:
        """The modality the text head opens after each prompt (a one-modality pipeline: always it)."""
        if len(self.modalities) == 1:
            return [self.modalities[0]] * len(prompts)
        encoded = [p.to(self.device) for p in self.encode_prompts(prompts)]
        return choose_modality(self.model, encoded, SamplingConfig(temperature=temperature, seed=seed), self.modalities)

    @torch.no_grad()
    def generate_tokens(self, prompts: list[str], config: SamplingConfig, modality: str | None = None,
                        use_cache: bool = True, compile_step: bool | None = None,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        modality = self._check(modality) if modality else self.modality
        tokenizer = self.tokenizers[modality]
        teacher_inputs = getattr(tokenizer, "teacher_inputs", None)
        prompts = [p.to(self.device) for p in self.encode_prompts(prompts, modality)]
        return generate(self.model, prompts, modality, config, teacher_inputs=teacher_inputs, use_cache=use_cache,
                        compile_step=compile_step, progress=progress)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, *, modality: str | None = None,
                 guidance_scale: float | None = None, guidance_schedule: str | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 plausibility: float | None = None, seed: int = 0, compile_step: bool | None = None,
                 progress: Callable[[str, int, int], None] | None = None, **head_options) -> list[Any]:
        """Generate `num_images_per_prompt` items for each prompt, prompt-major order.

        A sampling setting left None is the modality's stored default (`sampling_defaults`).

        `progress(modality, done, total)` follows each modality's positions or scales as they are drawn.

        `compile_step`: compile each decode step as a whole (`mmar/decode.py`); None compiles on CUDA
        only. The first call compiles (tens of seconds on CPU), later ones reuse it.

        `modality=None`: a one-modality pipeline uses its modality; otherwise the text head picks one
        per item (`choose`), and `self.last_modalities` says which.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_images_per_prompt < 1:
            raise ValueError(f"the number of samples must be at least 1, got {num_images_per_prompt}")
        given = {"guidance_scale": guidance_scale, "guidance_schedule": guidance_schedule, "temperature": temperature,
                 "top_k": top_k, "top_p": top_p, "plausibility": plausibility}
        given = {key: value for key, value in given.items() if value is not None}
        repeated = [p for p in prompts for _ in range(num_images_per_prompt)]
        chosen = [self._check(modality)] * len(repeated) if modality else self.choose(repeated, seed=seed)
        if head_options and any(self.head_of(m) != "flow_matching" for m in set(chosen)):
            raise ValueError(f"sampling options {sorted(head_options)} are for the flow_matching head; "
                             f"{sorted(set(chosen))} use {sorted({self.head_of(m) for m in chosen})}")
        outputs: list[Any] = [None] * len(repeated)
        for name in dict.fromkeys(chosen):  # each chosen modality once, in first-seen order
            rows = [i for i, m in enumerate(chosen) if m == name]
            step = None if progress is None else lambda done, total, name=name: progress(name, done, total)
            config = SamplingConfig(**{**self.sampling_defaults(name), **given}, seed=seed, head_options=head_options)
            tokens = self.generate_tokens([repeated[i] for i in rows], config, name, compile_step=compile_step,
                                          progress=step)
            decoded = self.tokenizers[name].decode(tokens)  # (n, *data_shape)
            for i, item in zip(rows, decoded):
                outputs[i] = _to_output(self.spec(name).medium, item)
        self.last_modalities = chosen
        return outputs

    # --- captioning ---------------------------------------------------------------------------
    def caption_modality(self, medium: str = "image") -> str:
        """The modality whose tokenizer reads `medium` for captioning (the first such, in layout order)."""
        for name in self.modalities:
            if self.spec(name).medium == medium:
                return name
        raise ValueError(f"this pipeline has no {medium} tokenizer to caption with; it has {self.modalities}")

    @torch.no_grad()
    def caption(self, media: Image.Image | torch.Tensor | list, *, modality: str | None = None,
                temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                max_new_tokens: int = 64) -> list[str]:
        """Describe each item -> one caption per item, from the text head (temperature 0 = greedy).

        Images may be PIL images or tensors (3, H, W) / (B, 3, H, W) in [-1, 1]; they are resized
        to the tokenizer's size. The item is encoded, laid out as a segment after an empty text,
        and the text head writes what follows `</m>` until `<eos>`.
        """
        modality = self._check(modality) if modality else self.caption_modality()
        spec, tokenizer = self.spec(modality), self.tokenizers[modality]
        data = self._media_batch(media, spec)  # (B, *data_shape)
        tokens = tokenizer.encode(data)  # (B, ...)
        inputs = tokenizer.teacher_inputs(tokens).float().cpu() if spec.kind == "scales" else None
        empty = torch.zeros(0, dtype=torch.long)
        samples = [[Segment("text", empty), Segment(modality, tokens[i].cpu(), None if inputs is None else inputs[i])]
                   for i in range(len(tokens))]
        budget = self.model.config.transformer.max_len - spec.num_tokens - 3
        config = SamplingConfig(1.0, "constant", temperature, top_k, top_p, seed)
        texts = generate_text(self.model, samples, config, max_new_tokens=max(1, min(max_new_tokens, budget)))
        return [self.tokenizers["text"].decode(t.clamp(0, 255)) for t in texts]

    def _media_batch(self, media, spec: ModalitySpec) -> torch.Tensor:
        if spec.medium != "image":
            items = media if isinstance(media, torch.Tensor) else torch.stack(list(media))
            return items.to(self.device)
        size = spec.data_shape[-1] if spec.data_shape else None
        if isinstance(media, (Image.Image, torch.Tensor)):
            media = [media] if isinstance(media, Image.Image) or media.dim() == 3 else list(media.unbind(0))
        if not media:
            raise ValueError("nothing to caption: no images")
        images = []
        for item in media:
            if isinstance(item, Image.Image):
                images.append(from_pil(item, size))
            elif isinstance(item, torch.Tensor) and item.dim() == 3 and item.shape[0] == 3:
                resized = item if size is None or item.shape[-2:] == (size, size) else \
                    torch.nn.functional.interpolate(item[None].float(), size=(size, size), mode="bicubic")[0]
                images.append(resized.clamp(-1, 1))
            else:
                raise ValueError(f"expected PIL images or tensors (3, H, W) in [-1, 1], got {type(item).__name__}"
                                 f"{tuple(item.shape) if isinstance(item, torch.Tensor) else ''}")
        return torch.stack(images).float().to(self.device)  # (B, 3, H, W)
