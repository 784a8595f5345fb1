"""A checker for any image data: a feature net trained on the data's held-out real images judges samples.

Procedural sources have analytic checkers (`checkers.py`); real image data (Fashion-MNIST, a user
folder) has none, so this checker scores generated images with a `FeatureNet` trained on held-out
real images and their captions (`feature_net.py`): the Fréchet distance to those real images
(Heusel et al. 2017) and improved precision / recall (Kynkäänniemi et al. 2019) always, and, when
the captions are class-like, the fraction of samples the net classifies as their prompt's class
(the "classifier accuracy" of conditional GAN work, e.g. Odena et al. 2017's AC-GAN).

It follows the `Checker` protocol but is not in `CHECKERS`: it needs data and a trained net.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from mmar.evaluation.feature_net import FeatureNet, class_names, frechet_distance, load_or_train, precision_recall
from mmar.images import from_pil

#: neighbours of the precision / recall manifolds; score() needs more outputs than this
NEIGHBOURS = 3


class FeatureChecker:
    """Scores generated images against held-out real ones (N, 3, S, S) in [-1, 1] and their captions.

    `attributes` are the per-output accuracies `score` reports: ("class", "all") with classes, none
    without (one image alone cannot be judged then; `score` gives the set's distances only).
    `score_captions` reports "all" (exact caption match) either way, plus "class" with classes.
    """

    def __init__(self, net: FeatureNet, report: dict[str, Any], images: torch.Tensor, captions: list[str]) -> None:
        if len(images) != len(captions) or len(images) <= NEIGHBOURS:
            raise ValueError(f"need more than {NEIGHBOURS} real images with one caption each, "
                             f"got {len(images)} images and {len(captions)} captions")
        self.classes = class_names(captions)
        if len(self.classes or []) != net.config.num_classes:
            raise ValueError(f"the feature net has {net.config.num_classes} classes but the captions give "
                             f"{len(self.classes or [])}: train it on these images and captions")
        self.net, self.report = net.eval(), report
        self.images, self.captions = images, list(captions)  # (N, 3, S, S), N captions
        self.real_features = net.embed(images)  # (N, F)
        self.attributes: tuple[str, ...] = ("class", "all") if self.classes else ()

    @classmethod
    def build(cls, images: torch.Tensor, captions: list[str], cache_dir: str | Path, seed: int = 0,
              **training: Any) -> "FeatureChecker":
        """A checker over these held-out images, its net from `load_or_train` (trained once, then cached)."""
        net, report = load_or_train(cache_dir, images, captions, seed=seed, **training)
        return cls(net, report, images, captions)

    def prompts(self, num_prompts: int, seed: int) -> list[str]:
        """`num_prompts` captions: the classes in turn from a seeded order (balanced: counts differ by at
        most one), or without classes held-out captions drawn without repeats while they last."""
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be positive, got {num_prompts}")
        pool = self.classes or self.captions
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
        return [pool[order[i % len(order)]] for i in range(num_prompts)]

    def _as_images(self, outputs: list[Any] | torch.Tensor) -> torch.Tensor:
        """PIL images or tensors (3, H, W) in [-1, 1] (or one batch (B, 3, H, W)) -> (B, 3, S, S), clamped."""
        size = self.net.config.image_size
        items = list(outputs.unbind(0)) if isinstance(outputs, torch.Tensor) and outputs.dim() == 4 else list(outputs)
        images = []
        for item in items:
            image = from_pil(item) if isinstance(item, Image.Image) else item  # (3, H, W)
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected PIL images or tensors (3, H, W), got "
                                 f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
            image = image.detach().float().cpu()[None]  # (1, 3, H, W)
            if image.shape[-2:] != (size, size):
                image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                                      antialias=True)  # (1, 3, S, S)
            images.append(image.clamp(-1, 1))
        return torch.cat(images)  # (B, 3, S, S)

    @torch.no_grad()
    def score(self, outputs: list[Any] | torch.Tensor, prompts: list[str]) -> dict[str, Any]:
        """Generated images vs their prompts -> {"class", "all" (fraction classified as the prompt's
        class), "feature_net_accuracy" (the net's own test accuracy)} with classes, or
        {"feature_net": its report's summary} without; both with "frechet" (to all the held-out real
        images; it grows as samples get fewer, so compare equal counts), "precision", "recall", "count".
        """
        if len(outputs) != len(prompts) or len(prompts) <= NEIGHBOURS:
            raise ValueError(f"need more than {NEIGHBOURS} outputs with one prompt each, "
                             f"got {len(outputs)} outputs and {len(prompts)} prompts")
        features = self.net.embed(self._as_images(outputs))  # (B, F)
        precision, recall = precision_recall(self.real_features, features, k=NEIGHBOURS)
        quality = {"frechet": frechet_distance(features, self.real_features), "precision": precision,
                   "recall": recall, "count": len(prompts)}
        if not self.classes:
            summary = {key: self.report.get(key) for key in ("kind", "test_reconstruction_error", "mean_image_error")}
            return {**quality, "feature_net": summary}
        unknown = sorted(set(prompts) - set(self.classes))
        if unknown:
            raise ValueError(f"prompts {unknown[:3]} are not class captions; known: {self.classes}")
        targets = torch.tensor([self.classes.index(prompt) for prompt in prompts])  # (B,)
        predicted = self.net.classifier(features).argmax(1)  # (B,)
        accuracy = (predicted == targets).float().mean().item()
        return {"class": accuracy, "all": accuracy, **quality, "feature_net_accuracy": self.report.get("test_accuracy")}

    def caption_items(self, num_items: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """`num_items` held-out real images, drawn with `seed` without repeats -> (images (n, 3, S, S), captions)."""
        if not 1 <= num_items <= len(self.captions):
            raise ValueError(f"num_items must be in 1..{len(self.captions)} (the held-out images), got {num_items}")
        index = torch.randperm(len(self.captions), generator=torch.Generator().manual_seed(seed))[:num_items]  # (n,)
        return self.images[index], [self.captions[i] for i in index.tolist()]

    def score_captions(self, captions: list[str], truths: list[str]) -> dict[str, Any]:
        """Each caption (stripped) equal to its item's own caption, i.e. its class caption with classes
        -> {"class" (with classes), "all": fraction, "count"}."""
        if len(captions) != len(truths) or not captions:
            raise ValueError(f"{len(captions)} captions for {len(truths)} items")
        exact = sum(text.strip() == truth for text, truth in zip(captions, truths)) / len(captions)
        return {**({"class": exact} if self.classes else {}), "all": exact, "count": len(captions)}
