"""The canonical row schema every loader produces, and helpers to read it.

Columns:
    id (str): unique row id.
    image (datasets.Image): the row's first image with its original bytes, or None for text-only rows and for
        rows whose image could not be read (then ``error`` says why).
    images (list of datasets.Image): every image of the row when it has more than one, else empty. Use
        :func:`row_images` to get all images of a row either way.
    messages (list of {"role", "content"}): the conversation; roles are ``system``, ``user``, ``assistant``;
        ``<image>`` in a content string marks where an image goes.
    error (str or None): None for usable rows, else ``"<kind>: <detail>"`` (see :data:`ERROR_KINDS`).
    source (str or None): which sub-dataset or task the row came from.

Derived on demand: :func:`instruction` (first user turn, image token removed) and :func:`response`
(assistant turns joined).
"""

from __future__ import annotations

import re
from typing import Any

# The error rule lives with the other row rules; re-exported because loaders and summaries read it from here.
from selector.rows import error_kind  # noqa: F401

IMAGE_TOKEN = "<image>"
ROLES = ("system", "user", "assistant")
CANONICAL_COLUMNS = ("id", "image", "images", "messages", "error", "source")

#: Error kinds a loader may set; the part of ``error`` before the first colon.
ERROR_KINDS = {
    "missing_image": "the image file does not exist",
    "empty_image": "the image file has zero bytes",
    "corrupt_image": "the image file is truncated or not an image",
    "image_too_large": "the image exceeds the byte or pixel caps (per image, after a model's resize, or per row)",
    "image_outside_root": "the image path resolves outside the allowed image roots",
    "unsupported_image_format": "the image's format is not on the allow-list (selector.data.images.ALLOWED_FORMATS)",
    "missing_conversation": "the row has no conversation field",
    "empty_conversation": "the conversation has no turns",
    "bad_turn": "a turn has an unknown role or a non-string value",
    "no_assistant_turn": "the conversation has no assistant answer",
    "image_token_mismatch": "the number of <image> tokens differs from the number of images",
    "invalid_utf8": "the text contained bytes that are not UTF-8 (replaced by U+FFFD)",
    "invalid_json": "the line is not valid JSON",
    "bad_row": "the row does not have the format's structure",
}

IMAGE_ERROR_KINDS = frozenset(
    {
        "missing_image",
        "empty_image",
        "corrupt_image",
        "image_too_large",
        "image_outside_root",
        "unsupported_image_format",
    }
)

_TOKEN_RE = re.compile(r"\s*<image>\s*")


def features():
    """The ``datasets.Features`` of canonical rows (imports ``datasets`` on call)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "images": List(Image()),
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "error": Value("string"),
            "source": Value("string"),
        }
    )


def instruction(messages: list[dict[str, str]] | None) -> str | None:
    """The first user turn with ``<image>`` tokens removed, or None when there is no user turn."""
    for turn in messages or ():
        if turn["role"] == "user":
            return _TOKEN_RE.sub(" ", turn["content"]).strip()
    return None


def response(messages: list[dict[str, str]] | None, sep: str = "\n") -> str | None:
    """All assistant turns joined with ``sep``, or None when there is none."""
    answers = [turn["content"] for turn in messages or () if turn["role"] == "assistant"]
    return sep.join(answers) if answers else None


def row_images(row: dict[str, Any]) -> list:
    """Every image of a row (``images`` when it has several, else ``[image]``), without None entries."""
    images = row.get("images") or []
    if images:
        return [img for img in images if img is not None]
    return [row["image"]] if row.get("image") is not None else []


def batch_images(batch: dict[str, list]) -> list[list]:
    """:func:`row_images` for each row of a column batch (as given to ``Dataset.map(batched=True)``)."""
    n = len(batch["id"])
    images = batch.get("images") or [None] * n
    singles = batch.get("image") or [None] * n
    return [row_images({"image": singles[i], "images": images[i]}) for i in range(n)]


def to_rgb(image) -> PIL.Image.Image:  # noqa: F821
    """Decode an image (PIL image, ``{"bytes", "path"}`` dict, bytes or path) to 8-bit RGB.

    Palette images go through RGBA so transparency becomes white instead of the palette's background;
    LA/RGBA are composited on white; CMYK is converted by Pillow; 16-bit and 32-bit integer or float
    grayscale is *scaled* to 0..255 by its type's range (a 16-bit value of 65535 becomes 255), never clipped.

    Raises:
        selector.data.images.ImageError: (a ``ValueError``) bytes or a path that :func:`selector.data.images.open_any`
            refuses. Decoder errors of an accepted image propagate; :func:`selector.data.images.decode_rgb` turns
            every failure into ``ImageError``.
    """
    from PIL import Image

    from selector.data.images import open_any

    # Bytes and paths open through the one safe opener (format allow-list, byte and pixel caps, regular files).
    image = open_any(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(image)
        if image.mode.startswith("I;16"):
            scaled = arr.astype(np.float32) / 65535.0
        elif image.mode == "I":
            # 32-bit container; PNG 16-bit grayscale often decodes to mode "I" with values in 0..65535.
            scaled = arr.astype(np.float64) / (65535.0 if arr.max(initial=0) <= 65535 else 2**31 - 1)
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        gray = Image.fromarray(np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
