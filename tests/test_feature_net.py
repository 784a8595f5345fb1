"""The self-trained feature net and its checker: Fréchet distance, precision / recall, caching (CPU, tiny)."""

import logging
import math

import pytest
import torch

from mmar.data.fashion_mnist import FashionMNIST, FashionMNISTNotFound
from mmar.data.shapes import ShapesDataset, all_captions
from mmar.evaluation import feature_net
from mmar.evaluation.feature_checker import FeatureChecker
from mmar.evaluation.feature_net import (FeatureNet, FeatureNetConfig, class_names, frechet_distance, load_or_train,
                                         precision_recall, train_feature_net)
from mmar.images import to_pil


def items_of(dataset, num_items: int) -> tuple[torch.Tensor, list[str]]:
    items = [dataset[i] for i in range(num_items)]
    return torch.stack([image for image, _ in items]), [text for _, text in items]  # (N, 3, S, S)


def fashion(split: str, num_items: int) -> tuple[torch.Tensor, list[str]]:
    try:
        return items_of(FashionMNIST(split, size=32, limit=num_items), num_items)
    except FashionMNISTNotFound as error:
        pytest.skip(f"Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): {error}")


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (std `sigma` px) of images (B, 3, H, W), edges replicated."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)  # (K,)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, K)
    padded = torch.nn.functional.pad(images, (radius,) * 4, mode="replicate")  # (B, 3, H+2r, W+2r)
    rows = torch.nn.functional.conv2d(padded, kernel, groups=3)  # (B, 3, H+2r, W)
    return torch.nn.functional.conv2d(rows, kernel.transpose(2, 3), groups=3)  # (B, 3, H, W)


def noisy(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))  # (B, 3, H, W)
    return (images + std * noise).clamp(-1, 1)


def uniform_noise(num_items: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(num_items, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # (N, 3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for these tiny convolutions: on two shared cores a second thread mostly waits (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifier():
    """A net trained on 600 held-out Fashion-MNIST test images; 800 train-split images never seen by it."""
    images, captions = fashion("test", 600)
    net, report = train_feature_net(images, captions, seed=0, steps=150, batch_size=32)
    held_out, held_out_captions = fashion("train", 800)
    return net, report, held_out, held_out_captions


@pytest.fixture(scope="module")
def autoencoder():
    images, captions = items_of(ShapesDataset(300, size=32, seed=3), 300)
    net, report = train_feature_net(images, captions, seed=0, steps=100, batch_size=32)
    return net, report, images, captions


# --- class_names ------------------------------------------------------------------------------------
def test_class_names_rule():
    assert class_names(["b", "a", "b", "a", "a", "b"]) == ["a", "b"]
    assert class_names(["a", "b", "a", "b", "a"]) is None  # "b" only twice: nothing to test it on
    assert class_names(["a"] * 5) is None  # one class is no classification
    assert class_names(all_captions() * 3) is None  # the shapes grammar: 120 captions, more than 100
    bag, coat = "a photo of a bag", "a photo of a coat"
    assert class_names([coat, bag] * 3) == [bag, coat]


# --- Fréchet distance and precision / recall: exact cases and errors ---------------------------------
def test_frechet_distance_exact_cases():
    features = torch.randn(400, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (N, F)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 3.0], dtype=torch.float64)  # (F,)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(features, features + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    # b = 2a: |mu|^2 + tr(S) + 4 tr(S) - 2 tr(2 S) = |mu|^2 + tr(S)
    expected = float(features.mean(0).square().sum() + torch.cov(features.T).trace())
    assert frechet_distance(features, 2 * features) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_singular_and_errors():
    few = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))  # N < F: singular covariance
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(frechet_distance(few, few + 1))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(few[:1], few)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(few, few[:, :8])
    with pytest.raises(ValueError, match="N >= 4"):
        precision_recall(few, few, k=3)


def test_precision_recall_separates_sets():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=generator)  # (N, F)
    same = torch.randn(300, 4, generator=generator)
    far = torch.randn(300, 4, generator=generator) + 10
    collapsed = torch.randn(300, 4, generator=generator) * 0.05  # realistic but without variety
    assert min(precision_recall(real, same)) > 0.8
    assert max(precision_recall(real, far)) == 0.0
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.1


# --- the classifier on Fashion-MNIST --------------------------------------------------------------
def test_classifier_accuracy_well_above_chance(classifier):
    net, report, held_out, captions = classifier
    assert report["kind"] == "classifier" and len(report["classes"]) == 10
    assert report["num_fit"] + report["num_test"] == 600 and 110 <= report["num_test"] <= 130  # 20% of each class
    assert report["test_accuracy"] > 0.6  # chance 0.1
    assert set(report["per_class_accuracy"]) == set(report["classes"])
    targets = torch.tensor([report["classes"].index(text) for text in captions])  # (N,)
    with torch.no_grad():
        accuracy = (net.logits(held_out).argmax(1) == targets).float().mean().item()
    assert accuracy > 0.6


def test_frechet_distance_on_real_images(classifier):
    net, _, held_out, _ = classifier
    first, second = net.embed(held_out[:400]), net.embed(held_out[400:])  # (400, F) each
    halves = frechet_distance(first, second)
    assert frechet_distance(first, first) < 1e-6
    assert frechet_distance(net.embed(uniform_noise(400)), first) > 20 * halves


def test_frechet_distance_grows_with_blur_and_noise(classifier):
    net, _, held_out, _ = classifier
    reference, images = net.embed(held_out[:400]), held_out[400:]
    blurred = [frechet_distance(net.embed(blur(images, sigma)), reference) for sigma in (0.5, 1.0, 2.0)]
    noised = [frechet_distance(net.embed(noisy(images, std)), reference) for std in (0.1, 0.3, 0.6)]
    clean = frechet_distance(net.embed(images), reference)
    assert clean < blurred[0] < blurred[1] < blurred[2]
    assert clean < noised[0] < noised[1] < noised[2]


def test_precision_recall_on_real_images(classifier):
    net, _, held_out, _ = classifier
    first, second = net.embed(held_out[:400]), net.embed(held_out[400:])
    assert min(precision_recall(first, second)) > 0.7
    assert max(precision_recall(first, net.embed(uniform_noise(400)))) < 0.05


def test_training_is_deterministic_and_checks_inputs():
    images, captions = items_of(ShapesDataset(20, seed=0), 20)
    first, _ = train_feature_net(images, captions, seed=5, steps=2, batch_size=4)
    second, _ = train_feature_net(images, captions, seed=5, steps=2, batch_size=4)
    other, _ = train_feature_net(images, captions, seed=6, steps=2, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.encoder[0][0].weight, other.encoder[0][0].weight)
    with pytest.raises(ValueError, match="captions"):
        train_feature_net(images, captions[:-1], steps=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        train_feature_net(images[:, :, :30, :30], captions, steps=1)
    with pytest.raises(ValueError, match="at least 10"):
        train_feature_net(images[:5], captions[:5], steps=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        FeatureNet(FeatureNetConfig(image_size=36))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\)"):
        first.features(images[:, :, :16, :16])


# --- the autoencoder on shapes (120 captions: not class-like) ---------------------------------------
def test_autoencoder_without_classes(autoencoder):
    net, report, images, captions = autoencoder
    assert report["kind"] == "autoencoder" and report["classes"] == [] and report["test_accuracy"] is None
    assert report["test_reconstruction_error"] < 0.8 * report["mean_image_error"]  # measured 0.58
    with pytest.raises(ValueError, match="no classes"):
        net.logits(images[:2])
    checker = FeatureChecker(net, report, images, captions)
    assert checker.attributes == () and set(checker.prompts(10, seed=0)) <= set(captions)
    scores = checker.score(images[:150], captions[:150])
    assert "class" not in scores and "all" not in scores and scores["feature_net"]["kind"] == "autoencoder"
    noise_scores = checker.score(uniform_noise(150), captions[:150])
    assert noise_scores["frechet"] > 5 * scores["frechet"]
    assert scores["precision"] > 0.7 and noise_scores["precision"] < 0.05


# --- cache ------------------------------------------------------------------------------------------
@pytest.fixture
def counted_training(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return train(*args, **kwargs)

    train = feature_net.train_feature_net
    monkeypatch.setattr(feature_net, "train_feature_net", counting)
    return calls


def test_cache_loads_and_retrains_on_changes(tmp_path, counted_training):
    images, captions = items_of(ShapesDataset(24, seed=1), 24)
    net, report = load_or_train(tmp_path, images, captions, seed=0, steps=2, batch_size=4)
    again, again_report = load_or_train(tmp_path, images, captions, seed=0, steps=2, batch_size=4)
    assert len(counted_training) == 1 and again_report == report
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    changed_images = images.clone()
    changed_images[0, 0, 0, 0] += 0.5
    load_or_train(tmp_path, changed_images, captions, seed=0, steps=2, batch_size=4)
    load_or_train(tmp_path, images, captions[::-1], seed=0, steps=2, batch_size=4)
    load_or_train(tmp_path, images, captions, seed=1, steps=2, batch_size=4)
    load_or_train(tmp_path, images, captions, seed=0, steps=3, batch_size=4)
    assert len(counted_training) == 5 and len(list(tmp_path.iterdir())) == 5


def _remove_weights(directory):
    (directory / "model.safetensors").unlink()


def _bad_manifest_json(directory):
    (directory / "manifest.json").write_text("{not json")


def _altered_report(directory):
    (directory / "report.json").write_text("{}")


def _truncated_weights(directory):
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _nan_weights_rehashed(directory):
    """Non-finite weights behind a consistent manifest: only the finiteness check catches them."""
    from safetensors.torch import load_file, save_file

    from mmar.files import MODEL_FILES, write_manifest

    tensors = load_file(directory / "model.safetensors")
    name = next(key for key in tensors if key.endswith("weight"))
    tensors[name][...] = float("nan")
    save_file(tensors, directory / "model.safetensors")
    write_manifest(directory, list(MODEL_FILES))


@pytest.mark.parametrize("damage", [_remove_weights, _bad_manifest_json, _altered_report, _truncated_weights,
                                    _nan_weights_rehashed])
def test_damaged_cache_is_retrained(tmp_path, counted_training, caplog, damage):
    images, captions = items_of(ShapesDataset(24, seed=2), 24)
    load_or_train(tmp_path, images, captions, seed=0, steps=2, batch_size=4)
    (directory,) = tmp_path.iterdir()
    damage(directory)
    with pytest.raises((OSError, ValueError)):
        FeatureNet.load(directory)
    with caplog.at_level(logging.WARNING, logger="mmar.evaluation.feature_net"):
        net, _ = load_or_train(tmp_path, images, captions, seed=0, steps=2, batch_size=4)
    assert len(counted_training) == 2
    assert sum("retraining the feature net" in record.message for record in caplog.records) == 1
    assert all(bool(torch.isfinite(tensor).all()) for tensor in net.state_dict().values())
    FeatureNet.load(directory)  # the retrained folder is whole again


# --- the checker on Fashion-MNIST -----------------------------------------------------------------
def test_checker_class_accuracy_and_prompts(classifier):
    net, report, held_out, captions = classifier
    checker = FeatureChecker(net, report, held_out, captions)
    assert checker.attributes == ("class", "all")
    prompts = checker.prompts(50, seed=3)
    assert sorted(prompts) == sorted(checker.classes * 5) and prompts != checker.prompts(50, seed=4)
    images, truths = checker.caption_items(200, seed=0)
    right = checker.score(images, truths)
    wrong_prompts = [checker.classes[(checker.classes.index(text) + 1) % 10] for text in truths]
    wrong = checker.score(images, wrong_prompts)
    assert right["class"] == right["all"] > 0.6 and wrong["class"] < 0.15
    assert right["frechet"] == wrong["frechet"] and right["count"] == 200
    assert right["feature_net_accuracy"] == report["test_accuracy"]
    upscaled = checker.score([to_pil(image).resize((64, 64)) for image in images], truths)  # PIL, resized back
    assert abs(upscaled["class"] - right["class"]) < 0.1
    assert checker.score_captions(truths, truths) == {"class": 1.0, "all": 1.0, "count": 200}
    assert checker.score_captions(wrong_prompts, truths)["all"] == 0.0
    with pytest.raises(ValueError, match="not class captions"):
        checker.score(images[:8], ["a photo of a cat"] * 8)
    with pytest.raises(ValueError, match="outputs"):
        checker.score(images[:8], truths[:7])


def test_save_and_load_round_trip(tmp_path, classifier):
    net, report, held_out, _ = classifier
    net.save(tmp_path / "net", report)
    loaded, loaded_report = FeatureNet.load(tmp_path / "net")
    assert loaded_report == report and loaded.config == net.config
    assert torch.equal(loaded.embed(held_out[:16]), net.embed(held_out[:16]))
    assert not (tmp_path / ".tmp-net").exists()
