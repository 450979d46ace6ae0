"""Image metrics decoding in DataLoader worker processes (``num_workers``): same scores as the in-process path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from metric_rows import contract_rows, image_bytes, make_dataset, turns

from metrics import get_metric
from metrics.image_loader import default_num_workers, image_sizes, size_ordered_batches, start_method
from selector.errors import ConfigError


def _rows():
    # The contract rows (corrupt image, text-only, error, several images, 16-bit, palette) plus images of very
    # different encoded sizes, so that the size ordering really reorders the rows.
    rows = contract_rows()
    for k, size in enumerate(((300, 200), (16, 16), (120, 90), (64, 64))):
        rows.append(
            {
                "id": f"sized-{k}",
                "image": image_bytes((k * 60, 90, 30), size=size, fmt="PNG"),
                "messages": turns("What?", "A small picture. It has colours."),
            }
        )
    return rows


def _score(params, tmp_path, name):
    import selector

    ds = make_dataset(_rows())
    ds.save_to_disk(str(tmp_path / f"in-{name}"))
    from datasets import load_from_disk

    # On disk, as `vlselect score` reads it: the workers memory-map the Arrow file instead of receiving a copy.
    return selector.score(load_from_disk(str(tmp_path / f"in-{name}")), [params], batch_size=4)


# Worker start-up (a fork server importing torch, transformers and datasets) dominates: one metric by default.
@pytest.mark.parametrize("kind", [pytest.param("clip", marks=pytest.mark.slow), "dinov2"])
def test_workers_give_the_in_process_scores(kind, tiny_clip_path, tiny_dinov2_path, tmp_path, caplog):
    if kind == "clip":
        base = {"metric": "clip", "model_name_or_path": tiny_clip_path, "batch_size": 3}
        column = "score_clip"
    else:
        base = {"metric": "embedding", "name": "dino", "model_name_or_path": tiny_dinov2_path, "batch_size": 3}
        column = "emb_dino"
    plain = _score({**base, "num_workers": 0}, tmp_path, "plain")
    with caplog.at_level(logging.WARNING, logger="metrics"):
        parallel = _score({**base, "num_workers": 2}, tmp_path, "workers")
    a, b = np.asarray(plain[column], dtype=np.float32), np.asarray(parallel[column], dtype=np.float32)
    assert a.shape == b.shape == ((14,) if kind == "clip" else (14, a.shape[1]))
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=2e-5)
    ids = parallel["id"] if "id" in parallel.column_names else make_dataset(_rows())["id"]
    corrupt = ids.index("corrupt")
    assert np.isnan(b[corrupt]).all()
    assert not np.isnan(b[ids.index("sized-0")]).any()
    # The worker's decode failure reaches the main process's log with the row id.
    assert any("corrupt" in r.getMessage() and "could not be decoded" in r.getMessage() for r in caplog.records)


def test_uses_workers_only_when_asked_or_on_cuda(tiny_clip_path):
    import torch

    assert not get_metric("clip", model_name_or_path=tiny_clip_path).uses_decode_workers()
    assert get_metric("clip", model_name_or_path=tiny_clip_path, num_workers=2).uses_decode_workers()
    text = get_metric("embedding", model_name_or_path=tiny_clip_path, modality="text", num_workers=2)
    assert not text.uses_decode_workers()  # text embeddings decode no images
    assert default_num_workers("cpu") == 0
    assert default_num_workers("cuda:0") >= 1
    if not torch.cuda.is_available():
        assert not get_metric("embedding", model_name_or_path=tiny_clip_path).uses_decode_workers()


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_num_workers_is_checked(value, tiny_clip_path):
    metric = get_metric("clip", model_name_or_path=tiny_clip_path, num_workers=value)
    with pytest.raises(ConfigError, match="num_workers"):
        metric.score_batch(make_dataset(_rows()[:1])[:])


def test_never_fork():
    assert start_method().get_start_method() in ("forkserver", "spawn")


def test_batches_group_rows_of_similar_image_size():
    from datasets import Image

    ds = make_dataset(_rows()).cast_column("image", Image(decode=False))
    sizes = image_sizes(ds)
    assert sizes[ds["id"].index("text-only")] == 0
    expected = [len(r["image"]["bytes"]) if r.get("image") else 0 for r in _rows()]
    assert sizes.tolist() == expected
    batches = size_ordered_batches(sizes, 3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(ds)))
    # every row of a batch is no larger than every row of the next batch
    for left, right in zip(batches, batches[1:]):
        assert sizes[left].max() <= sizes[right].min()
