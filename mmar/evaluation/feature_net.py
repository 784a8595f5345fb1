"""A small feature network trained on a dataset's own held-out images, and the distances it scores with.

No pretrained Inception or CLIP can be downloaded here, so the Fréchet distance and precision /
recall of generated images use the features of a net mmar trains itself, on held-out real images
of the same data (the FID of Heusel et al. 2017, https://arxiv.org/abs/1706.08500, with a
home-grown feature extractor, as MNIST-like work often does with a small domain classifier).

What the net learns depends on the captions:

- class-like captions (`class_names`: a small closed set, e.g. "a photo of a dress") -> a
  classifier over them (cross-entropy, random shifts and flips), whose accuracy on its own test
  part says how much its features can be trusted;
- anything else -> a plain autoencoder (Hinton & Salakhutdinov 2006): the net is the encoder and
  a small decoder must rebuild the image from the F features alone, so they keep what tells
  images apart without any label.

Features are the penultimate layer (B, F). `frechet_distance` fits a Gaussian to each set (float64,
symmetric eigendecompositions only, no scipy); `precision_recall` is the k-NN manifold estimate of
Kynkäänniemi et al. 2019 (https://arxiv.org/abs/1904.06991). A trained net caches in a folder named
by a SHA-256 of its inputs and settings (`load_or_train`); a damaged cache is retrained, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import nn

from mmar.config import validate
from mmar.files import load_model_folder, load_or_train_folder, save_model_folder

logger = logging.getLogger(__name__)

#: the closed-set rule of `class_names`
MAX_CLASSES, MIN_PER_CLASS = 100, 3
#: at least this many items to train on (a test part of 20% must hold a few)
MIN_ITEMS = 10
TEST_FRACTION = 0.2
#: bump when training changes, so caches made by older code are not reused
FORMAT = 1


@dataclass
class FeatureNetConfig:
    image_size: int = 32  # S, a multiple of 8 (three 2x poolings)
    width: int = 16  # channels of the first stage, doubled at each of the two others
    feature_dim: int = 128  # F
    num_classes: int = 0  # K; 0 = no classes (an autoencoder: a decoder instead of a classifier)

    LIMITS = {"image_size": "[8, 1024]", "width": "[1, 512]", "feature_dim": "[2, 4096]",
              "num_classes": f"[0, {MAX_CLASSES}]"}

    def check(self) -> None:
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x poolings), got {self.image_size}")
        if self.num_classes == 1:
            raise ValueError("num_classes must be 0 (no classes) or at least 2")


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3x3, BatchNorm, ReLU, 2x max-pool: (B, in, H, W) -> (B, out, H/2, W/2)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                         nn.ReLU(), nn.MaxPool2d(2))


def _up_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """2x nearest upsampling, conv 3x3, BatchNorm, ReLU: (B, in, H, W) -> (B, out, 2H, 2W)."""
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class FeatureNet(nn.Module):
    """A three-stage CNN over images (B, 3, S, S) in [-1, 1] -> features (B, F), with a classifier
    head (F -> K) or, without classes, a decoder (F -> (3, S, S)).

    BatchNorm, not a per-image norm: in eval mode it normalises with the real data's statistics, so
    an abnormal input (noise) keeps abnormal activations and lands far from every real image; a
    GroupNorm net normalised noise's energy away and mapped it inside the real manifold (precision
    0.99 for uniform noise on Fashion-MNIST, 0.00 with BatchNorm).

    The layers are built on the meta device, so no default initialisation draws from the global
    RNG; `reset_parameters(generator)` then fills every weight.
    """

    def __init__(self, config: FeatureNetConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = validate(config)
        width, grid = config.width, config.image_size // 8
        with torch.device("meta"):
            self.encoder = nn.Sequential(
                _stage(3, width), _stage(width, 2 * width), _stage(2 * width, 4 * width),  # (B, 4w, S/8, S/8)
                Rearrange("b c h w -> b (c h w)"),
                nn.Linear(4 * width * grid * grid, config.feature_dim), nn.ReLU())  # (B, F)
            self.classifier = nn.Linear(config.feature_dim, config.num_classes) if config.num_classes else None
            self.decoder = None if config.num_classes else nn.Sequential(
                nn.Linear(config.feature_dim, 4 * width * grid * grid), nn.ReLU(),
                Rearrange("b (c h w) -> b c h w", h=grid, w=grid),  # (B, 4w, S/8, S/8)
                _up_stage(4 * width, 2 * width), _up_stage(2 * width, width),  # (B, w, S/2, S/2)
                nn.Upsample(scale_factor=2), nn.Conv2d(width, 3, 3, padding=1))  # (B, 3, S, S)
        self.to_empty(device="cpu")
        self.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0))

    def reset_parameters(self, generator: torch.Generator) -> None:
        he_initialise(self, generator)

    def _check(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images (B, 3, {size}, {size}), got shape {tuple(images.shape)}")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> penultimate features (B, F)."""
        self._check(images)
        return self.encoder(images)  # (B, F)

    forward = features

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) -> class logits (B, K)."""
        if self.classifier is None:
            raise ValueError("this feature net has no classes (it was trained as an autoencoder)")
        return self.classifier(self.features(images))  # (B, K)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) -> the decoder's rebuild of them from their features (B, 3, S, S)."""
        if self.decoder is None:
            raise ValueError("this feature net is a classifier: it has no decoder")
        return self.decoder(self.features(images))  # (B, 3, S, S)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features of many images (N, 3, S, S) in eval mode, `batch_size` at a time -> (N, F)."""
        self._check(images)
        was_training = self.training
        self.eval()
        features = torch.cat([self.features(chunk) for chunk in images.split(batch_size)])  # (N, F)
        self.train(was_training)
        return features

    # --- save / load ---------------------------------------------------------------------------
    def save(self, directory: str | Path, report: dict[str, Any]) -> Path:
        """Write config.json, model.safetensors, report.json and manifest.json atomically (`save_model_folder`)."""
        return save_model_folder(self, self.config, report, directory, "the feature net")

    @classmethod
    def load(cls, directory: str | Path) -> tuple["FeatureNet", dict[str, Any]]:
        """(in eval mode, report) from a `save` folder, every file checked (`load_model_folder`)."""
        return load_model_folder(cls, FeatureNetConfig, directory)


@torch.no_grad()
def he_initialise(root: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions and linear layers from `generator`, zero biases, fresh unit norms: a
    seeded initialisation that never touches the global RNG (the self-trained nets are deterministic)."""
    for module in root.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def class_names(captions: list[str]) -> list[str] | None:
    """The sorted distinct captions when they form a small closed set, else None.

    Closed set: 2..MAX_CLASSES (100) distinct captions, each one given to at least MIN_PER_CLASS (3)
    items, so every class has items both to fit on and to test on. Fashion-MNIST's 10 captions are
    classes; the shapes grammar's 120 captions are not (it is trained as an autoencoder).
    """
    counts = Counter(captions)
    if not 2 <= len(counts) <= MAX_CLASSES or min(counts.values()) < MIN_PER_CLASS:
        return None
    return sorted(counts)


def _check_items(images: torch.Tensor, captions: list[str]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 \
            or images.shape[2] != images.shape[3] or images.shape[2] % 8:
        raise ValueError(f"expected images (N, 3, S, S) with S a multiple of 8, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < MIN_ITEMS:
        raise ValueError(f"a feature net needs at least {MIN_ITEMS} images, got {len(images)}")
    if not images.dtype.is_floating_point or not bool(torch.isfinite(images).all()):
        raise ValueError("images must be finite floats in [-1, 1]")


def split(num_items: int, labels: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle 0..N-1 into (fit indices, test indices), TEST_FRACTION tested; per class when `labels` (N,) are given."""
    if labels is None:
        order = torch.randperm(num_items, generator=generator)  # (N,)
        num_test = max(1, round(TEST_FRACTION * num_items))
        return order[num_test:], order[:num_test]
    fit, test = [], []
    for label in range(int(labels.max()) + 1):
        members = (labels == label).nonzero().squeeze(1)  # (n,)
        members = members[torch.randperm(len(members), generator=generator)]  # (n,)
        num_test = max(1, round(TEST_FRACTION * len(members)))
        test.append(members[:num_test])
        fit.append(members[num_test:])
    return torch.cat(fit), torch.cat(test)


def augment(images: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random shifts of up to `shift` px (edges replicated) and horizontal flips of images (B, 3, S, S)."""
    batch, _, size, _ = images.shape
    padded = F.pad(images, (shift,) * 4, mode="replicate")  # (B, 3, S+2s, S+2s)
    rows = torch.randint(0, 2 * shift + 1, (batch, 1), generator=generator) + torch.arange(size)  # (B, S)
    columns = torch.randint(0, 2 * shift + 1, (batch, 1), generator=generator) + torch.arange(size)  # (B, S)
    items = torch.arange(batch)[:, None, None]  # (B, 1, 1)
    shifted = padded[items, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)  # (B, 3, S, S)
    flip = torch.rand(batch, generator=generator) < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], shifted.flip(-1), shifted)  # (B, 3, S, S)


def train_feature_net(images: torch.Tensor, captions: list[str], *, seed: int = 0, steps: int = 500,
                      batch_size: int = 64, learning_rate: float = 3e-3, width: int = 16, feature_dim: int = 128,
                      progress: bool = False) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a feature net on held-out images (N, 3, S, S) in [-1, 1] and their captions -> (net, report).

    The items are split (seeded, stratified by class when class-like) into a fit part (80%) and a
    test part (20%). AdamW with a cosine learning-rate decay over `steps` batches drawn with
    replacement, augmented by `augment`. Deterministic for a seed; the global RNG is never used.
    `progress` logs the loss ten times. The report: kind ("classifier" / "autoencoder"), classes,
    num_fit, num_test, test_accuracy and per_class_accuracy (classifier; else None and {}),
    test_reconstruction_error and mean_image_error (autoencoder: mean squared error on the test
    part, and that of predicting the fit part's mean image; else None), seconds, and the settings.
    """
    _check_items(images, captions)
    if steps < 1 or batch_size < 1 or not learning_rate > 0:
        raise ValueError(f"steps, batch_size and learning_rate must be positive, "
                         f"got {steps}, {batch_size}, {learning_rate}")
    start = time.perf_counter()
    images = images.detach().float().cpu()  # (N, 3, S, S)
    classes = class_names(captions)
    labels = torch.tensor([classes.index(text) for text in captions]) if classes else None  # (N,)
    generator = torch.Generator().manual_seed(seed)
    fit, test = split(len(images), labels, generator)
    config = FeatureNetConfig(image_size=images.shape[-1], width=width, feature_dim=feature_dim,
                              num_classes=len(classes) if classes else 0)
    net = FeatureNet(config, generator).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    for step in range(steps):
        index = fit[torch.randint(len(fit), (batch_size,), generator=generator)]  # (B,)
        batch = augment(images[index], generator)  # (B, 3, S, S)
        if labels is not None:
            loss = F.cross_entropy(net.logits(batch), labels[index])
        else:
            loss = F.mse_loss(net.reconstruct(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and (step + 1) % max(1, steps // 10) == 0:
            logger.info("feature net step %d/%d: loss %.4f", step + 1, steps, loss.item())
    net.eval()
    report = {"kind": "classifier" if classes else "autoencoder", "classes": classes or [],
              "num_fit": len(fit), "num_test": len(test), **_test_scores(net, images, labels, fit, test, classes),
              "seconds": round(time.perf_counter() - start, 2),
              "settings": _settings(seed, steps, batch_size, learning_rate, width, feature_dim)}
    return net, report


@torch.no_grad()
def _test_scores(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor | None, fit: torch.Tensor,
                 test: torch.Tensor, classes: list[str] | None) -> dict[str, Any]:
    """Test accuracy (overall and per class) of a classifier, reconstruction errors of an autoencoder."""
    if labels is None:
        rebuilt = torch.cat([net.reconstruct(chunk) for chunk in images[test].split(256)])  # (n, 3, S, S)
        mean_image = images[fit].mean(0, keepdim=True)  # (1, 3, S, S)
        return {"test_accuracy": None, "per_class_accuracy": {},
                "test_reconstruction_error": F.mse_loss(rebuilt, images[test]).item(),
                "mean_image_error": F.mse_loss(mean_image.expand_as(images[test]), images[test]).item()}
    predicted = torch.cat([net.logits(chunk).argmax(1) for chunk in images[test].split(256)])  # (n,)
    correct = predicted == labels[test]  # (n,)
    per_class = {name: correct[labels[test] == label].float().mean().item() for label, name in enumerate(classes)}
    return {"test_accuracy": correct.float().mean().item(), "per_class_accuracy": per_class,
            "test_reconstruction_error": None, "mean_image_error": None}


def _settings(seed: int, steps: int, batch_size: int, learning_rate: float, width: int, feature_dim: int) -> dict:
    return {"seed": seed, "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "width": width, "feature_dim": feature_dim}


def identity(images: torch.Tensor, captions: list[str], settings: dict[str, Any]) -> str:
    """SHA-256 over the images' float32 bytes, their shape, the captions and the training settings."""
    digest = hashlib.sha256()
    header = {"format": FORMAT, "shape": list(images.shape), "captions": list(captions), "settings": settings}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_or_train(cache_dir: str | Path, images: torch.Tensor, captions: list[str], *, seed: int = 0,
                  steps: int = 500, batch_size: int = 64, learning_rate: float = 3e-3, width: int = 16,
                  feature_dim: int = 128, progress: bool = False) -> tuple[FeatureNet, dict[str, Any]]:
    """The net `train_feature_net` gives for these arguments, cached in `cache_dir/<identity>/`.

    A cached folder is used only when its hashes, config, finite weights and recorded identity all
    check out; anything else (a missing file, bad JSON, altered bytes) is logged in one line and
    retrained over.
    """
    _check_items(images, captions)
    key = identity(images, captions, _settings(seed, steps, batch_size, learning_rate, width, feature_dim))
    directory = Path(cache_dir) / key[:32]
    train = lambda: train_feature_net(images, captions, seed=seed, steps=steps, batch_size=batch_size,  # noqa: E731
                                      learning_rate=learning_rate, width=width, feature_dim=feature_dim,
                                      progress=progress)
    return load_or_train_folder(directory, key, FeatureNet.load, train, "feature net")


# --- distances between feature sets ---------------------------------------------------------------
def _check_sets(features_a: torch.Tensor, features_b: torch.Tensor, minimum: int) -> None:
    for name, features in (("first", features_a), ("second", features_b)):
        if features.dim() != 2 or len(features) < minimum:
            raise ValueError(f"the {name} feature set must be (N, F) with N >= {minimum}, got {tuple(features.shape)}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} vs {features_b.shape[1]}")


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (F, F); rounding's tiny negative eigenvalues -> 0."""
    values, vectors = torch.linalg.eigh(matrix)  # (F,), (F, F)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T  # (F, F)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features (N, F) and (M, F) (Heusel et al. 2017):

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), in float64. The inner
    matrix is symmetric, so both roots are eigendecompositions; singular covariances (N <= F) are fine.
    """
    _check_sets(features_a, features_b, minimum=2)
    a, b = features_a.detach().double().cpu(), features_b.detach().double().cpu()  # (N, F), (M, F)
    covariance_a, covariance_b = torch.cov(a.T), torch.cov(b.T)  # (F, F) each
    root_a = _sqrt_psd(covariance_a)  # (F, F)
    middle = root_a @ covariance_b @ root_a  # (F, F)
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (a.mean(0) - b.mean(0)).square().sum() + covariance_a.trace() + covariance_b.trace() - 2 * trace_root
    return max(float(distance), 0.0)  # rounding can leave -1e-12 for identical sets


def _kth_neighbour_distances(points: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each of points (N, F) to its k-th nearest other point -> (N,)."""
    # the (k+1)-th smallest distance of a row: the first is the point itself, at 0
    return torch.cat([torch.cdist(rows, points).kthvalue(k + 1, dim=1).values for rows in points.split(chunk)])


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of queries (Q, F) inside at least one ball (centres (C, F), radii (C,))."""
    inside = [(torch.cdist(rows, centres) <= radii).any(1) for rows in queries.split(chunk)]  # Q/chunk x (chunk,)
    return torch.cat(inside).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake features (M, F) against real (N, F).

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: the fraction of fakes inside the real manifold (are they realistic?);
    recall: the fraction of reals inside the fake manifold (is the data's variety covered?).
    """
    _check_sets(real, fake, minimum=k + 1)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()  # (N, F), (M, F)
    precision = _covered(fake, real, _kth_neighbour_distances(real, k))
    recall = _covered(real, fake, _kth_neighbour_distances(fake, k))
    return precision, recall
