"""Hostile and unlucky image files: paths that escape the image root, special files, Pillow's odd exceptions,
formats off the allow-list and image bombs. Each one must become that row's ``error`` (or a counted metric
failure), never a crash, a hang, or a read of a file outside the allowed roots.

The damaged-image fuzzer is in ``test_hostile_images_fuzz.py``.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from selector.data import load_instructions
from selector.data.images import (
    ALLOWED_FORMATS,
    ImageError,
    ImageLimits,
    check_image_bytes,
    decode_row,
    read_image_file,
    resized_size,
)
from selector.errors import ConfigError
from selector.rows import error_kind

MARKER = "VLSELECT-OUTSIDE-MARKER-7f3a"
GOOD = [
    {"from": "human", "value": "<image>\nWhat is this?"},
    {"from": "gpt", "value": "A green square with a label."},
]


def _png(size=(8, 8), color=(0, 128, 0), text: str | None = None, mode="RGB") -> bytes:
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", text)
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _llava(folder, rows, name="data.json") -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        json.dump(rows, handle)
    return path


def _errors(ds) -> dict:
    return dict(zip(ds["id"], ds["error"]))


@pytest.fixture
def escape_layout(tmp_path):
    """``data/`` (the image root, with a good image and a symlink out) beside ``outside/secret.png``.

    The secret image carries a marker in a PNG text chunk, so its bytes are easy to find in any output file.
    """
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = _png(color=(200, 0, 0), text=MARKER)
    (outside / "secret.png").write_bytes(secret)
    (data / "img" / "ok.png").write_bytes(_png())
    os.symlink(outside / "secret.png", data / "img" / "link.png")
    os.symlink(outside, data / "img" / "linkdir")
    rows = [
        {"id": "ok", "image": "img/ok.png", "conversations": GOOD},
        {"id": "absolute", "image": str(outside / "secret.png"), "conversations": GOOD},
        {"id": "dotdot", "image": "img/../../outside/secret.png", "conversations": GOOD},
        {"id": "symlink", "image": "img/link.png", "conversations": GOOD},
        {"id": "symlinked_dir", "image": "img/linkdir/secret.png", "conversations": GOOD},
    ]
    return {"data": data, "outside": outside, "secret": secret, "source": _llava(str(data), rows)}


def _written_files(*folders):
    for folder in folders:
        if os.path.isfile(folder):
            yield folder
            continue
        for parent, _, files in os.walk(folder):
            for name in files:
                yield os.path.join(parent, name)


def _assert_nothing_leaked(layout, *outputs, paths=True):
    """No file an output holds contains the outside image's bytes, its marker or (``paths``) its real path."""
    needles = [layout["secret"], MARKER.encode()]
    if paths:
        needles.append(os.path.realpath(layout["outside"] / "secret.png").encode())
    files = list(_written_files(*map(str, outputs)))
    assert files, "the run wrote nothing to check"
    for path in files:
        with open(path, "rb") as handle:
            content = handle.read()
        for needle in needles:
            assert needle not in content, f"{path} holds {needle[:40]!r}"


# Paths outside the image root.


def test_paths_outside_the_image_root_are_row_errors(escape_layout):
    ds = load_instructions(escape_layout["source"])
    errors = _errors(ds)
    assert errors["ok"] is None
    for row_id in ("absolute", "dotdot", "symlink", "symlinked_dir"):
        assert error_kind(errors[row_id]) == "image_outside_root", (row_id, errors[row_id])
    assert all(row["image"] is None for row in ds if row["id"] != "ok")
    # The message names the path as the data gave it, never where a symlink leads.
    assert "img/link.png" in errors["symlink"]
    assert str(escape_layout["outside"]) not in errors["symlink"]


def test_allow_outside_root_opts_in(escape_layout):
    ds = load_instructions(escape_layout["source"], allow_outside_root=True)
    assert all(error is None for error in ds["error"])
    from datasets import Image as ImageFeature

    by_id = {row["id"]: row for row in ds.cast_column("image", ImageFeature(decode=False))}
    assert by_id["symlink"]["image"]["bytes"] == escape_layout["secret"]


def test_explicit_image_roots_are_the_allowed_roots(escape_layout, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.png").write_bytes(_png(color=(1, 2, 3)))
    rows = [
        {"id": "in_second_root", "image": "b.png", "conversations": GOOD},
        {"id": "in_data_dir", "image": "img/ok.png", "conversations": GOOD},  # the data folder is not a root now
        {"id": "escape", "image": "../outside/secret.png", "conversations": GOOD},
    ]
    source = _llava(str(escape_layout["data"]), rows, name="roots.json")
    ds = load_instructions(source, image_root=[str(other), str(tmp_path / "data" / "img")])
    errors = _errors(ds)
    assert errors["in_second_root"] is None
    assert error_kind(errors["in_data_dir"]) == "missing_image"
    assert error_kind(errors["escape"]) == "image_outside_root"


def test_messages_and_canonical_paths_are_checked_too(escape_layout):
    secret = str(escape_layout["outside"] / "secret.png")
    rows = [
        {
            "id": "messages",
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": "A thing."},
            ],
            "images": [{"path": secret, "bytes": None}],
        }
    ]
    path = escape_layout["data"] / "messages.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_instructions(str(path))
    assert error_kind(ds[0]["error"]) == "image_outside_root"


def test_nothing_from_outside_reaches_any_output(escape_layout, tmp_path):
    """Convert, score and inspect on data naming outside images: grep every file they wrote."""
    from selector.cli import main

    # The absolute-path row names the secret's path itself in its error; the other rows must not reveal it.
    rows = [
        {"id": "ok", "image": "img/ok.png", "conversations": GOOD},
        {"id": "dotdot", "image": "img/../../outside/secret.png", "conversations": GOOD},
        {"id": "symlink", "image": "img/link.png", "conversations": GOOD},
    ]
    source = _llava(str(escape_layout["data"]), rows, name="relative.json")
    converted = tmp_path / "converted"
    converted.mkdir()
    assert main(["convert", source, str(converted / "out.json"), "--to", "llava", "--quiet"]) == 0
    assert main(["score", source, "--out", str(tmp_path / "scored"), "--metrics", "length", "--quiet"]) == 0
    _assert_nothing_leaked(escape_layout, converted, tmp_path / "scored")

    # The absolute row: its bytes must not leak (its path is in the error message by design).
    scored_abs = tmp_path / "scored_abs"
    assert main(["score", escape_layout["source"], "--out", str(scored_abs), "--metrics", "length", "--quiet"]) == 0
    _assert_nothing_leaked(escape_layout, scored_abs, paths=False)


def test_trusted_roots_are_allowed_but_never_searched(tmp_path):
    from selector.data.images import resolve_image_path

    root, cache = tmp_path / "root", tmp_path / "cache"
    root.mkdir()
    cache.mkdir()
    (cache / "a.png").write_bytes(_png())
    path, error = resolve_image_path(str(cache / "a.png"), [str(root)], trusted_roots=[str(cache)])
    assert error is None and path == os.path.realpath(cache / "a.png")
    assert error_kind(resolve_image_path(str(cache / "a.png"), [str(root)])[1]) == "image_outside_root"
    # a relative path is looked up in the roots only
    assert resolve_image_path("a.png", [str(root)], trusted_roots=[str(cache)])[0] == str(root / "a.png")


def test_cli_flag_allows_outside_root(escape_layout, capsys):
    from selector.cli import main

    assert main(["inspect", escape_layout["source"], "--json", "--quiet"]) == 0
    refused = json.loads(capsys.readouterr().out)
    assert "image_outside_root" in json.dumps(refused)
    assert main(["inspect", escape_layout["source"], "--json", "--quiet", "--allow-outside-root"]) == 0
    allowed = json.loads(capsys.readouterr().out)
    assert "image_outside_root" not in json.dumps(allowed)


def test_pipeline_field_and_its_type():
    from selector.pipeline import PipelineConfig

    assert PipelineConfig(source="a.json", out="o").allow_outside_root is False
    assert PipelineConfig(source="a.json", out="o", allow_outside_root=True).allow_outside_root is True
    with pytest.raises(ConfigError, match="allow_outside_root"):
        PipelineConfig(source="a.json", out="o", allow_outside_root="false")


def test_image_folder_symlink_out_of_the_folder(tmp_path):
    from selector.images import load_image_classification

    root = tmp_path / "flowers"
    (root / "rose").mkdir(parents=True)
    (root / "rose" / "a.png").write_bytes(_png())
    outside = tmp_path / "private.png"
    outside.write_bytes(_png(color=(9, 9, 9), text=MARKER))
    os.symlink(outside, root / "rose" / "b.png")
    ds, _ = load_image_classification(str(root))
    errors = _errors(ds)
    assert errors["rose/a.png"] is None
    assert error_kind(errors["rose/b.png"]) == "image_outside_root"
    ds, _ = load_image_classification(str(root), allow_outside_root=True)
    assert _errors(ds)["rose/b.png"] is None


# Special files.


@pytest.mark.timeout(30)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused_without_reading(tmp_path, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    data, error = read_image_file(device)
    assert data is None and error_kind(error) == "missing_image" and "regular file" in error
    # Even when the user allows paths outside the root, and through a symlink inside it.
    os.symlink(device, tmp_path / "dev.png")
    rows = [
        {"id": "absolute", "image": device, "conversations": GOOD},
        {"id": "link", "image": "dev.png", "conversations": GOOD},
    ]
    ds = load_instructions(_llava(str(tmp_path), rows), allow_outside_root=True)
    assert all(error_kind(e) == "missing_image" and "regular file" in e for e in ds["error"])


@pytest.mark.timeout(30)
def test_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    ds = load_instructions(_llava(str(tmp_path), [{"id": "fifo", "image": "pipe.png", "conversations": GOOD}]))
    assert error_kind(ds[0]["error"]) == "missing_image"
    assert "regular file" in ds[0]["error"]


def test_file_size_cap(tmp_path, monkeypatch):
    (tmp_path / "big.png").write_bytes(_png(size=(64, 64)) + b"\0" * 5000)  # trailing bytes: still a valid PNG
    rows = [{"id": "big", "image": "big.png", "conversations": GOOD}]
    assert load_instructions(_llava(str(tmp_path), rows))[0]["error"] is None
    monkeypatch.setenv("VLSELECT_MAX_IMAGE_BYTES", "4096")
    ds = load_instructions(_llava(str(tmp_path), rows))  # a different cap is a different cache key
    assert error_kind(ds[0]["error"]) == "image_too_large"
    assert "4,096-byte cap" in ds[0]["error"]
    assert ImageLimits().max_file_bytes == 64 * 2**20  # the documented default


def test_bad_limit_variable_is_a_config_error(monkeypatch):
    monkeypatch.setenv("VLSELECT_MAX_ROW_PIXELS", "lots")
    with pytest.raises(ConfigError, match="VLSELECT_MAX_ROW_PIXELS"):
        ImageLimits.from_env()


# Pillow's exceptions and formats off the allow-list.


def _damaged_avif() -> bytes:
    """An AVIF whose colour planes fail to decode: Pillow raises RuntimeError from ``load()``."""
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((16, 16)).convert("RGB").save(buffer, format="AVIF")
    data = buffer.getvalue()
    rng = random.Random(0)
    for _ in range(5000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            with Image.open(io.BytesIO(bytes(damaged))) as image:
                image.load()
        except RuntimeError:
            return bytes(damaged)
        except Exception:  # noqa: BLE001 - other damage: keep searching for the RuntimeError case
            continue
    raise AssertionError("no RuntimeError-raising AVIF found")


def _dds_unknown_fourcc() -> bytes:
    """A DDS header with a pixel format Pillow does not implement: ``Image.open`` raises NotImplementedError."""
    header = struct.pack("<3I", 0x1007, 4, 4) + struct.pack("<3I", 0, 0, 0) + b"\0" * 44
    header += struct.pack("<4I", 32, 0x4, int.from_bytes(b"ZZZZ", "little"), 0) + b"\0" * 36
    assert len(header) == 120
    return b"DDS " + struct.pack("<I", 124) + header + b"\0" * 64


def _eps() -> bytes:
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
    )


@pytest.mark.skipif(not __import__("PIL.features").features.check("avif"), reason="Pillow without AVIF")
def test_damaged_avif_runtime_error_is_a_row_error(tmp_path):
    blob = _damaged_avif()
    with pytest.raises(RuntimeError), Image.open(io.BytesIO(blob)) as image:  # what Pillow does on its own
        image.load()
    assert error_kind(check_image_bytes(blob, "x.avif")) == "corrupt_image"
    (tmp_path / "x.avif").write_bytes(blob)
    ds = load_instructions(_llava(str(tmp_path), [{"id": "avif", "image": "x.avif", "conversations": GOOD}]))
    assert error_kind(ds[0]["error"]) == "corrupt_image"
    assert "RuntimeError" in ds[0]["error"]


def test_dds_not_implemented_error_is_a_row_error(tmp_path):
    blob = _dds_unknown_fourcc()
    with pytest.raises(NotImplementedError):  # what Pillow does on its own
        Image.open(io.BytesIO(blob))
    # Off the allow-list: refused from its signature, no decoder runs.
    assert error_kind(check_image_bytes(blob, "x.dds")) == "unsupported_image_format"
    # Allowed by the caller: the decoder's NotImplementedError is still only this image's error.
    limits = ImageLimits(formats=(*ALLOWED_FORMATS, "DDS"))
    assert error_kind(check_image_bytes(blob, "x.dds", limits)) == "corrupt_image"
    (tmp_path / "x.dds").write_bytes(blob)
    ds = load_instructions(_llava(str(tmp_path), [{"id": "dds", "image": "x.dds", "conversations": GOOD}]))
    assert error_kind(ds[0]["error"]) == "unsupported_image_format"


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or None)
    blob = _eps()
    with Image.open(io.BytesIO(blob)) as image:  # Pillow on its own opens it as EPS (and would run gs on load)
        assert image.format == "EPS"
    (tmp_path / "x.eps").write_bytes(blob)
    (tmp_path / "x.png").write_bytes(blob)  # the extension does not matter
    rows = [
        {"id": "eps", "image": "x.eps", "conversations": GOOD},
        {"id": "renamed", "image": "x.png", "conversations": GOOD},
    ]
    ds = load_instructions(_llava(str(tmp_path), rows))
    assert [error_kind(e) for e in ds["error"]] == ["unsupported_image_format"] * 2
    assert "EPS" in ds[0]["error"]
    assert calls == []


@pytest.mark.parametrize(
    "exc, kind",
    [
        (RuntimeError("decoder state"), "corrupt_image"),
        (NotImplementedError("variant"), "corrupt_image"),
        (ZeroDivisionError("division by zero"), "corrupt_image"),
        (struct.error("unpack requires a buffer"), "corrupt_image"),
        (MemoryError(), "image_too_large"),
    ],
)
def test_any_decoder_exception_is_a_row_error(tmp_path, monkeypatch, exc, kind):
    def broken_load(self):
        raise exc

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken_load)
    blob = _png()
    assert error_kind(check_image_bytes(blob, "x.png")) == kind
    (tmp_path / "x.png").write_bytes(blob)
    ds = load_instructions(_llava(str(tmp_path), [{"id": "x", "image": "x.png", "conversations": GOOD}]))
    assert error_kind(ds[0]["error"]) == kind
    with pytest.raises(ImageError) as info:
        decode_row([blob], "row x")
    assert error_kind(info.value.error) == kind


# Image bombs.


def _strip(width=1, height=60000) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_thin_strip_bomb_is_refused_before_the_processor_resizes_it():
    from transformers import CLIPImageProcessor

    blob = _strip()
    assert len(blob) < 400  # a few hundred bytes...
    assert check_image_bytes(blob, "strip.png") is None  # ...that pass Pillow's decompression-bomb check
    processor = CLIPImageProcessor()  # CLIP's default: shortest edge 224, then a 224x224 crop
    assert resized_size((1, 60000), processor) == (224, 13_440_000)  # ~3 billion pixels, ~9 GB as RGB
    with pytest.raises(ImageError) as info:
        decode_row([blob], "row strip", processor=processor)
    assert error_kind(info.value.error) == "image_too_large"
    assert "after the model's resize" in info.value.error
    # An ordinary image passes the same check.
    assert decode_row([_png(size=(320, 240))], "row ok", processor=processor)[0].size == (320, 240)


def test_strip_bomb_in_a_clip_metric_is_a_counted_failure(clip_metric_params, monkeypatch):
    from metric_rows import turns

    from metrics import get_metric

    # The tiny test model resizes to a 32-pixel shortest edge: 32x1,920,000 for the strip. A cap of 10 million
    # pixels stands in for the default against CLIP's 224 (3 billion pixels), which the test above checks.
    monkeypatch.setenv("VLSELECT_MAX_IMAGE_PIXELS", "10000000")
    metric = get_metric("clip", **clip_metric_params)
    batch = {
        "id": ["strip", "ok"],
        "image": [{"bytes": _strip(), "path": None}, {"bytes": _png(size=(40, 30)), "path": None}],
        "images": [[], []],
        "messages": [turns("What is this?", "A black strip."), turns("What is this?", "A green square.")],
        "error": [None, None],
    }
    scores = metric.score_batch(batch)[metric.column()]
    assert np.isnan(scores[0]) and np.isfinite(scores[1])
    assert metric._n_failed == 1


def test_row_pixel_cap_refuses_many_big_images_without_decoding(tmp_path, monkeypatch):
    # 9000x9000 = 81 million pixels: under Pillow's limit (89.5 million), so each image alone is fine.
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")
    rows = [
        {
            "id": "forty",
            "image": ["big.png"] * 40,
            "conversations": [
                {"from": "human", "value": "<image>" * 40 + "\nCompare them."},
                {"from": "gpt", "value": "They are all black."},
            ],
        },
        {"id": "one", "image": "big.png", "conversations": GOOD},
    ]
    loads = []
    original = ImageFile.ImageFile.load

    def counting_load(self):
        loads.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    ds = load_instructions(_llava(str(tmp_path), rows))
    errors = _errors(ds)
    assert error_kind(errors["forty"]) == "image_too_large"
    assert "per row" in errors["forty"] and "3,240,000,000" in errors["forty"]
    assert errors["one"] is None
    assert len(loads) == 1  # only the single image was decoded, never the forty
    assert ds[0]["image"] is None and ds[0]["images"] == [None] * 40  # a row over the cap keeps no image

    with pytest.raises(ImageError, match="per row"):
        decode_row([{"bytes": (tmp_path / "big.png").read_bytes(), "path": None}] * 40, "row forty")


def test_per_image_pixel_cap_follows_pillow_and_the_variable(monkeypatch):
    blob = _png(size=(100, 100))
    assert check_image_bytes(blob, "x") is None
    monkeypatch.setenv("VLSELECT_MAX_IMAGE_PIXELS", "9999")
    assert error_kind(check_image_bytes(blob, "x")) == "image_too_large"
    monkeypatch.delenv("VLSELECT_MAX_IMAGE_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9999)
    assert error_kind(check_image_bytes(blob, "x")) == "image_too_large"
