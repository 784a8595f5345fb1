"""A text-to-X pipeline: the tokenizers, the MMAR model and the routing, saved as one folder.

    pipeline.json            components, routing, and the SHA-256 of every weights file
    model/                   config.json + model.safetensors (the EMA weights after training)
    tokenizers/<name>/       config.json + model.safetensors, one per modality (text included)

`from_pretrained` verifies the hashes, so a truncated or altered file is a clear error; nothing is
unpickled. Calling the pipeline with a prompt returns PIL images; the head type comes from the
saved routing, so callers never say which head a pipeline uses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from mmar.files import file_hashes, verify_hashes
from mmar.generate import SamplingConfig, generate
from mmar.images import to_pil
from mmar.layout import ModalitySpec
from mmar.model import MMAR
from tokenizers_vq import Tokenizer, load_tokenizer

FORMAT = "mmar-pipeline/1"


def modality_spec(name: str, tokenizer: Tokenizer, data_shape: tuple[int, ...]) -> ModalitySpec:
    """Describe a trained tokenizer's token stream for the layout."""
    shape = tokenizer.token_shape(data_shape)
    scales = tuple(tuple(s) for s in getattr(tokenizer, "scales", ()))
    if scales:
        grid = (1, *scales[-1])
    else:
        grid = (1, *shape) if len(shape) == 2 else tuple(shape)
    return ModalitySpec(name, tokenizer.codebook_size, tokenizer.num_codebooks, tokenizer.latent_channels, grid, scales)


class Pipeline:
    def __init__(self, model: MMAR, tokenizers: dict[str, Tokenizer]) -> None:
        missing = sorted(set(model.config.heads) - set(tokenizers))
        if missing:
            raise ValueError(f"the pipeline lacks tokenizers for {missing}")
        self.model, self.tokenizers = model, tokenizers

    @property
    def modality(self) -> str:
        """The generated (non-text) modality."""
        return next(name for name in self.model.config.heads if name != "text")

    @property
    def head(self) -> str:
        return self.model.config.heads[self.modality].name

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
        """Write the pipeline folder atomically (a temporary folder renamed into place)."""
        directory = Path(directory)
        temporary = directory.with_name(f".tmp-{directory.name}")
        shutil.rmtree(temporary, ignore_errors=True)
        self.model.save_pretrained(temporary / "model")
        for name, tokenizer in self.tokenizers.items():
            tokenizer.save_pretrained(temporary / "tokenizers" / name)
        files = sorted(str(p.relative_to(temporary)) for p in temporary.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "modality": self.modality,
            "routing": {name: choice.name for name, choice in self.model.config.heads.items()},
            "components": {"model": "model", **{name: f"tokenizers/{name}" for name in self.tokenizers}},
            "sha256": file_hashes(temporary, files),
        }
        (temporary / "pipeline.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        temporary.replace(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu") -> "Pipeline":
        directory = Path(directory)
        manifest_path = directory / "pipeline.json"
        if not directory.is_dir():
            raise FileNotFoundError(f"no pipeline folder at {directory}; train one with `mmar quickstart` or `mmar train`")
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} has no pipeline.json: not a pipeline folder, or an incomplete one")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{manifest_path} is not valid JSON ({error})") from error
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
        verify_hashes(directory, manifest["sha256"])
        model = MMAR.from_pretrained(directory / manifest["components"]["model"])
        tokenizers = {name: load_tokenizer(directory / path)
                      for name, path in manifest["components"].items() if name != "model"}
        return cls(model, tokenizers).to(device)

    # --- generation ---------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """Validate and byte-encode prompts; a ValueError saying what is wrong."""
        spec = self.model.layout.modalities[self.modality]
        budget = self.model.config.transformer.max_len - spec.num_tokens - 3  # <bos>, <m>, </m>
        encoded = []
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("the prompt is empty; describe what to generate, e.g. 'a red circle at the top left'")
            size = len(prompt.encode("utf-8", errors="surrogateescape"))
            if size > budget:
                raise ValueError(f"the prompt is {size} bytes; this model's context leaves room for {budget}")
            codes = self.tokenizers["text"].encode(prompt)  # (n,)
            encoded.append(codes)
        return encoded

    @torch.no_grad()
    def generate_tokens(self, prompts: list[str], config: SamplingConfig, use_cache: bool = True,
                        compile_step: bool = False) -> torch.Tensor:
        tokenizer = self.tokenizers[self.modality]
        teacher_inputs = getattr(tokenizer, "teacher_inputs", None)
        return generate(self.model, [p.to(self.device) for p in self.encode_prompts(prompts)], self.modality, config,
                        teacher_inputs=teacher_inputs, use_cache=use_cache, compile_step=compile_step)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, *, guidance_scale: float = 3.0,
                 guidance_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, **head_options) -> list[Image.Image]:
        """Generate `num_images_per_prompt` images for each prompt -> PIL images, prompt-major order."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_images_per_prompt < 1:
            raise ValueError(f"the number of images must be at least 1, got {num_images_per_prompt}")
        config = SamplingConfig(guidance_scale, guidance_schedule, temperature, top_k, top_p, seed, head_options)
        repeated = [p for p in prompts for _ in range(num_images_per_prompt)]
        tokens = self.generate_tokens(repeated, config)
        images = self.tokenizers[self.modality].decode(tokens)  # (N, 3, H, W)
        return [to_pil(image) for image in images]
