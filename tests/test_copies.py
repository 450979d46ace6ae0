"""Copy detection: same instruction + an edited copy of the image is flagged; look-alikes and reuse are not."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from selector.copies import (
    COPY_COLUMNS,
    MIN_SCORE_FLOOR,
    align,
    base_image,
    calibrate_copy_thresholds,
    copy_duplicates,
    edit_copy,
    instruction_key,
)
from selector.errors import ConfigError, DataError

BACKGROUND = (236, 240, 246)


def _scene(seed: int, side: int = 96) -> Image.Image:
    """A photo-like picture: a smooth random colour field with a few random shapes on it."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((side, side), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, side - 20, size=2)
        w, h = rng.integers(8, 30, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((int(x), int(y), int(x + w), int(y + h)), fill=colour)
        else:
            draw.rectangle((int(x), int(y), int(x + w), int(y + h)), fill=colour)
    return image


def _triangle(x: int, y: int, side: int, colour=(200, 30, 30), size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    ImageDraw.Draw(image).polygon([(x, y + side), (x + side // 2, y), (x + side, y + side)], fill=colour)
    return image


def _disc(colour, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    ImageDraw.Draw(image).ellipse((14, 18, 44, 48), fill=colour)
    return image


def _crop(image: Image.Image, keep: float, fx: float, fy: float) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * keep), round(h * keep)
    x, y = round((w - cw) * fx), round((h - ch) * fy)
    return image.crop((x, y, x + cw, y + ch))


def _encode(image: Image.Image, fmt: str = "PNG", quality: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if quality else {}))
    return buffer.getvalue()


def _row(row_id: str, question: str, image: bytes | None, error: str | None = None) -> dict:
    return {
        "id": row_id,
        "image": None if image is None else {"bytes": image, "path": None},
        "images": [],
        "messages": [
            {"role": "user", "content": f"<image>\n{question}"},
            {"role": "assistant", "content": f"An answer for {row_id}."},
        ],
        "error": error,
        "source": None,
    }


def _dataset(rows: list[dict]):
    from datasets import Dataset

    from selector.data.schema import features

    return Dataset.from_list(rows, features=features())


def _copy_of(ds) -> dict:
    return dict(zip(ds["id"], ds["check_copy_of"]))


@pytest.fixture(scope="module")
def pool():
    scene = _scene(1)
    copies = {
        "crop": _encode(_crop(scene, 0.88, 0.8, 0.3)),
        "resize_jpeg": _encode(scene.resize((67, 67), Image.Resampling.BICUBIC), "JPEG", quality=40),
        "bright_crop": _encode(ImageEnhance.Brightness(_crop(scene, 0.9, 0.1, 0.9)).enhance(1.2)),
        "dark_big": _encode(ImageEnhance.Brightness(scene.resize((140, 140))).enhance(0.8)),
    }
    rows = [_row("orig", "What is in this picture?", _encode(scene))]
    rows += [_row(f"copy-{name}", "what is in this picture", data) for name, data in copies.items()]
    rows += [
        # the same picture with another question: legitimate, never a candidate
        _row("other-question", "How many shapes are there?", _encode(scene)),
        # other pictures under the same question: not copies
        _row("other-scene", "What is in this picture?", _encode(_scene(2))),
        _row("third-scene", "What is in this picture?", _encode(_scene(3))),
        # look-alikes: a triangle of the same colour elsewhere and bigger, and the same triangle in another colour
        _row("tri", "Which shape is it?", _encode(_triangle(6, 8, 16))),
        _row("tri-elsewhere", "Which shape is it?", _encode(_triangle(34, 30, 27))),
        _row("tri-recoloured", "Which shape is it?", _encode(_triangle(6, 8, 16, colour=(40, 120, 200)))),
        _row("tri-copy", "Which shape is it?", _encode(_crop(_triangle(6, 8, 16), 0.9, 0.5, 0.5), "JPEG", 60)),
        # the same disc, black and grey: NCC forgives the contrast, the photometric fit does not
        _row("disc-black", "What colour is the disc?", _encode(_disc((20, 20, 20)))),
        _row("disc-grey", "What colour is the disc?", _encode(_disc((128, 128, 128)))),
        # rows that must not crash
        _row("broken", "What is in this picture?", b"not an image at all"),
        _row("errored", "What is in this picture?", _encode(scene), error="missing_image: x.jpg"),
        _row("no-image", "What is in this picture?", None),
    ]
    return _dataset(rows)


def test_instruction_key_normalises_case_punctuation_and_image_token():
    user = [{"role": "user", "content": "<image>\n  What IS   in this picture?! "}]
    assert instruction_key(user) == "what is in this picture"
    assert instruction_key([{"role": "assistant", "content": "x"}]) is None


def test_edited_copies_with_the_same_instruction_are_flagged(pool):
    marked, thresholds = copy_duplicates(pool, return_thresholds=True)
    assert len(marked) == len(pool)
    copy_of = _copy_of(marked)
    for name in ("copy-crop", "copy-resize_jpeg", "copy-bright_crop", "copy-dark_big"):
        assert copy_of[name] == "orig", (name, dict(zip(marked["id"], marked["check_copy_score"]))[name])
    assert copy_of["tri-copy"] == "tri"
    assert copy_of["orig"] is None and copy_of["tri"] is None  # the earliest row keeps no pointer
    group = dict(zip(marked["id"], marked["check_copy_group"]))
    assert group["orig"] == group["copy-crop"] == "orig" and group["other-scene"] is None
    assert MIN_SCORE_FLOOR <= thresholds.min_score <= 1.0 and thresholds.n_calibration > 0


def test_reuse_with_another_question_and_look_alikes_are_not_flagged(pool):
    marked = copy_duplicates(pool)
    copy_of = _copy_of(marked)
    for name in ("other-question", "other-scene", "third-scene", "tri-elsewhere", "tri-recoloured", "disc-grey"):
        assert copy_of[name] is None, name
    scores = dict(zip(marked["id"], marked["check_copy_score"]))
    assert math.isnan(scores["other-question"])  # unique instruction: no candidate at all
    assert scores["copy-crop"] > scores["other-scene"]


def test_error_rows_and_unreadable_images_get_none_and_nan(pool):
    marked = copy_duplicates(pool)
    copy_of = _copy_of(marked)
    scores = dict(zip(marked["id"], marked["check_copy_score"]))
    for name in ("broken", "errored", "no-image"):
        assert copy_of[name] is None and math.isnan(scores[name]), name


def test_deterministic_and_independent_of_row_order(pool):
    first = copy_duplicates(pool)
    again = copy_duplicates(pool)
    assert first["check_copy_of"] == again["check_copy_of"]
    np.testing.assert_array_equal(np.array(first["check_copy_score"]), np.array(again["check_copy_score"]))
    order = list(range(len(pool)))
    random.Random(3).shuffle(order)
    shuffled = copy_duplicates(pool.select(order))

    def groups(ds):
        copy_of = _copy_of(ds)
        members: dict[str, set] = {}
        for row_id, root in copy_of.items():
            if root is not None:
                members.setdefault(root, {root}).add(row_id)
        return sorted(sorted(m) for m in members.values())

    assert groups(first) == groups(shuffled)
    scores = dict(zip(first["id"], first["check_copy_score"]))
    shuffled_scores = dict(zip(shuffled["id"], shuffled["check_copy_score"]))
    assert all(
        (math.isnan(scores[k]) and math.isnan(shuffled_scores[k])) or scores[k] == shuffled_scores[k] for k in scores
    )


def test_large_group_uses_nearest_neighbours_and_still_finds_copies():
    rows = [_row(f"scene-{i}", "Describe the image.", _encode(_scene(10 + i))) for i in range(8)]
    rows.append(_row("copy-of-3", "Describe the image.", _encode(_crop(_scene(13), 0.9, 0.2, 0.7), "JPEG", 50)))
    marked = copy_duplicates(_dataset(rows), n_neighbors=2, min_score=0.9)
    copy_of = _copy_of(marked)
    assert copy_of["copy-of-3"] == "scene-3"
    assert sum(v is not None for v in copy_of.values()) == 1


def test_fixed_threshold_is_used_and_reruns_replace_columns(pool):
    marked = copy_duplicates(pool, min_score=0.999)
    assert _copy_of(marked)["copy-resize_jpeg"] is None  # a JPEG re-encode never fits that well
    again = copy_duplicates(marked)
    assert [c for c in again.column_names if c in COPY_COLUMNS] == list(COPY_COLUMNS)


def test_align_scores_identity_high_and_flat_images_low():
    scene = base_image(_scene(5), 32, 1.25)
    assert align(scene, scene)[1] == pytest.approx(1.0, abs=1e-6)
    black, grey = base_image(_disc((20, 20, 20)), 32, 1.25), base_image(_disc((128, 128, 128)), 32, 1.25)
    ncc, fit = align(black, grey)
    assert ncc > 0.99 and fit < 0.8  # aligned perfectly, but no brightness change turns black into grey
    flat = base_image(Image.new("RGB", (50, 50), BACKGROUND), 32, 1.25)
    assert align(flat, flat) == (-1.0, -1.0)


def test_calibration_is_seeded_and_uses_the_edit_family():
    images = [_scene(i) for i in range(6)]
    one = calibrate_copy_thresholds(images, random_state=7)
    two = calibrate_copy_thresholds(images, random_state=7)
    assert one == two and one.n_calibration == 6
    copy = edit_copy(images[0], np.random.default_rng(0))
    assert copy.mode == "RGB" and copy.size != (0, 0)
    with pytest.raises(DataError, match="at least one readable image"):
        calibrate_copy_thresholds([])
    flat_only = calibrate_copy_thresholds([Image.new("RGB", (20, 20), BACKGROUND)])
    assert flat_only.min_score == MIN_SCORE_FLOOR and flat_only.n_calibration == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 4}, "size"),
        ({"max_scale": 3.0}, "max_scale"),
        ({"n_neighbors": 0}, "n_neighbors"),
        ({"min_score": 1.5}, "min_score"),
        ({"calibration_quantile": 0.7}, "calibration_quantile"),
        ({"n_calibration": 0}, "n_calibration"),
        ({"random_state": "x"}, "random_state"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(pool, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        copy_duplicates(pool, **kwargs)
    assert "\n" not in str(info.value)


def test_non_canonical_input_is_a_data_error(pool):
    with pytest.raises(DataError, match="canonical columns"):
        copy_duplicates(pool.remove_columns(["messages"]))
    with pytest.raises(DataError, match="map-style"):
        copy_duplicates([{"id": "a"}])
