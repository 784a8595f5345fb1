"""The analytic shapes checker agrees with the captions, survives blur and noise, and catches mismatches."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmar.data.shapes import COLORS, POSITIONS, SHAPES, ShapesDataset, caption, parse_caption, render
from mmar.evaluation import ShapeCheck, check, describe, evaluation_prompts, report_markdown, score


def dataset_batch(num_items: int, seed: int, size: int = 32) -> tuple[torch.Tensor, list[str]]:
    dataset = ShapesDataset(num_items, size=size, seed=seed)
    items = [dataset[i] for i in range(num_items)]
    return torch.stack([image for image, _ in items]), [text for _, text in items]  # (B, 3, H, W)


def degrade(images: torch.Tensor, sigma: float, noise: float, seed: int) -> torch.Tensor:
    """Gaussian blur (std `sigma` px) then Gaussian noise (std `noise`) of images (B, 3, H, W) in [-1, 1]."""
    radius = int(np.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)  # (K,)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (K,)
    channels = images.shape[1]
    padded = torch.nn.functional.pad(images + 1, (radius,) * 4)  # (B, 3, H+2r, W+2r), black border
    blurred = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                                         groups=channels)  # (B, 3, H+2r, W)
    blurred = torch.nn.functional.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                                         groups=channels) - 1  # (B, 3, H, W)
    generator = torch.Generator().manual_seed(seed)
    return (blurred + noise * torch.randn(blurred.shape, generator=generator)).clamp(-1, 1)  # (B, 3, H, W)


def agreement(images: torch.Tensor, captions: list[str]) -> dict:
    return score(images, captions)


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_clean_dataset_images(seed):
    images, captions = dataset_batch(1000, seed)
    result = agreement(images, captions)
    assert result["count"] == 1000
    assert result["all"] >= 0.99, result


@pytest.mark.parametrize("seed", [0, 1])
def test_robust_to_blur_and_noise(seed):
    images, captions = dataset_batch(1000, seed)
    result = agreement(degrade(images, sigma=0.7, noise=0.05, seed=seed), captions)
    assert result["all"] >= 0.97, result
    harsher = agreement(degrade(images[:300], sigma=1.0, noise=0.1, seed=seed), captions[:300])
    assert harsher["all"] >= 0.95, harsher


def test_robust_to_speckles_dim_colours_and_grey_background():
    images, captions = dataset_batch(300, seed=2)
    generator = torch.Generator().manual_seed(0)
    speckled = degrade(images, sigma=0.7, noise=0.05, seed=2)  # (B, 3, H, W)
    spots = torch.rand(speckled.shape[0], 1, 32, 32, generator=generator) < 0.01  # (B, 1, H, W)
    speckled = torch.where(spots, torch.rand(speckled.shape, generator=generator) * 2 - 1, speckled)
    assert agreement(speckled, captions)["all"] >= 0.97
    dim = (images + 1) * 0.35 - 1  # (B, 3, H, W) a dull generator: peak brightness 0.7 of full
    assert agreement(dim, captions)["all"] >= 0.99
    grey = (images + 1) * 0.8 - 1 + 0.2  # (B, 3, H, W) background at 0.1 instead of black
    assert agreement(grey, captions)["all"] >= 0.99


@pytest.mark.parametrize("size", [48, 64, 128])
def test_other_sizes(size):
    images, captions = dataset_batch(60, seed=0, size=size)
    assert agreement(images, captions)["all"] >= 0.98


def test_every_caption_on_a_plain_render():
    for color in COLORS:
        for shape in SHAPES:
            for position in POSITIONS:
                image = render(color, shape, position, 32)
                assert describe(image) == (color, shape, position)


def test_empty_image_is_all_false():
    for empty in (torch.full((3, 32, 32), -1.0), torch.full((3, 32, 32), 0.3),
                  degrade(torch.full((1, 3, 32, 32), -1.0), 0.7, 0.05, 0)[0]):
        assert describe(empty) == (None, None, None)
        result = check(empty, "a red circle at the center")
        assert result == ShapeCheck(False, False, False) and not result.all
    # a few stray pixels are not a shape either
    speck = torch.full((3, 32, 32), -1.0)  # (3, H, W)
    speck[:, 5, 5] = 1
    speck[:, 20, 11] = 1
    assert not check(speck, "a white square at the top left").all


def test_wrong_caption_is_detected():
    image = render("red", "square", "top right", 32, extent=13.0)  # (3, H, W)
    assert check(image, "a red square at the top right").all
    recoloured = image.clone()
    recoloured[[0, 2]] = image[[2, 0]]  # red -> blue
    result = check(recoloured, "a red square at the top right")
    assert result == ShapeCheck(color=False, shape=True, position=True)
    assert check(recoloured, "a blue square at the top right").all
    assert check(image, "a red circle at the top right") == ShapeCheck(True, False, True)
    assert check(image, "a red square at the bottom left") == ShapeCheck(True, True, False)
    for a, b in (("red", "orange"), ("orange", "yellow"), ("yellow", "white"), ("cyan", "green")):
        assert check(render(a, "circle", "center"), caption(b, "circle", "center")).color is False
    with pytest.raises(ValueError):
        check(image, "a red hexagon somewhere")


def test_accepts_pil_images():
    image = render("magenta", "triangle", "bottom left", 64)  # (3, H, W)
    pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()  # (H, W, 3)
    assert describe(Image.fromarray(pixels)) == ("magenta", "triangle", "bottom left")
    assert describe(pixels) == ("magenta", "triangle", "bottom left")


def test_evaluation_prompts_are_fixed_distinct_and_balanced():
    prompts = evaluation_prompts(64)
    assert prompts == evaluation_prompts(64, seed=0) and len(set(prompts)) == 64
    assert evaluation_prompts(64, seed=1) != prompts
    parsed = [parse_caption(p) for p in prompts]
    for index, names in enumerate((COLORS, SHAPES, POSITIONS)):
        counts = [sum(p[index] == name for p in parsed) for name in names]
        assert min(counts) >= 64 // len(names) and max(counts) <= -(-64 // len(names))
    assert sorted(evaluation_prompts(120)) == sorted(set(evaluation_prompts(120, seed=5)))
    with pytest.raises(ValueError):
        evaluation_prompts(121)


def test_score_and_report():
    prompts = evaluation_prompts(16)
    images = [render(*parse_caption(p)) for p in prompts]
    perfect = score(images, prompts)
    assert perfect == {"color": 1.0, "shape": 1.0, "position": 1.0, "all": 1.0, "count": 16}
    blank = score(torch.full((16, 3, 32, 32), -1.0), prompts)
    assert blank["all"] == 0.0 and blank["count"] == 16
    half = score(images[:8] + [torch.full((3, 32, 32), -1.0)] * 8, prompts)
    assert half["all"] == 0.5
    text = report_markdown(half, "Quickstart")
    assert "### Quickstart" in text and "| all | 50.0% |" in text and "16 images" in text
    with pytest.raises(ValueError):
        score(images, prompts[:3])
