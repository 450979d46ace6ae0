"""Reading and decoding images safely: the one place vlselect opens an image file or decodes image bytes.

Loaders keep the original bytes of every image that decodes; an image that can't be used becomes None and the
row gets an ``error`` of one of the kinds in :data:`selector.data.schema.ERROR_KINDS`. Metrics, checks, reports
and the training data path decode through :func:`open_image` / :func:`decode_rgb` / :func:`decode_row` too, so
the same rules hold at every step:

- **Paths stay inside the allowed roots.** A path from the data (absolute, relative with ``..``, or through a
  symlink) is resolved with :func:`os.path.realpath` and read only when it lies inside one of the image roots
  the loader resolves relative paths against: ``image_root`` when given (several allowed), else the format's
  default (the data file's folder; ShareGPT4V adds its parent, MiniGPT-4 uses ``<folder>/image``); a Hub
  dataset may also point into the Hugging Face caches its files were downloaded to. Anything
  else is the row error ``image_outside_root: <path>``, unless the caller passes ``allow_outside_root=True``
  (CLI ``--allow-outside-root``, pipeline YAML ``allow_outside_root: true``).
- **Only regular files are read**, at most :attr:`ImageLimits.max_file_bytes` of them (default 64 MiB): a
  device (``/dev/zero``), FIFO or socket named as an image is refused before it is opened.
- **Formats on an allow-list** (:data:`ALLOWED_FORMATS`); others, EPS/PS/PDF among them (EPS would run
  Ghostscript), are ``unsupported_image_format`` without any decoder running.
- **Pixel caps checked from the header, before decoding**: per image (Pillow's ``Image.MAX_IMAGE_PIXELS``,
  89,478,485 by default, also applied to the size a model's image processor would resize to) and per row
  (:data:`DEFAULT_MAX_ROW_PIXELS`, 200 million, all images of a row together).
- **Every decoder failure is the row's error**, never a crash: Pillow's ``OSError``/``SyntaxError``/
  ``ValueError``, ``RuntimeError`` (damaged AVIF), ``NotImplementedError`` (some DDS), ``struct.error``, ...
  become ``corrupt_image``; ``MemoryError`` becomes ``image_too_large``.

The caps come from :meth:`ImageLimits.from_env` unless a caller passes its own :class:`ImageLimits`; the
environment variables ``VLSELECT_MAX_IMAGE_BYTES``, ``VLSELECT_MAX_IMAGE_PIXELS`` and ``VLSELECT_MAX_ROW_PIXELS``
change them for every process of a run (worker processes included).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

#: Formats Pillow may open (its plugin ids). JPEG includes MPO (multi-picture JPEG from cameras). Everything else
#: is refused before a decoder runs: EPS (runs Ghostscript), PSD, DDS, FITS, and Pillow's other rare formats.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "PPM", "ICO", "JPEG2000")
_RESULT_FORMATS = {"MPO": "JPEG"}  # format an opened image may report -> the allowed plugin that produced it

#: Default cap on an image file's size in bytes (64 MiB).
DEFAULT_MAX_FILE_BYTES = 64 * 2**20
#: Default cap on the pixels of all images of one row together (200 million: about 600 MB decoded as RGB).
DEFAULT_MAX_ROW_PIXELS = 200_000_000

_ENV = {
    "max_file_bytes": "VLSELECT_MAX_IMAGE_BYTES",
    "max_image_pixels": "VLSELECT_MAX_IMAGE_PIXELS",
    "max_row_pixels": "VLSELECT_MAX_ROW_PIXELS",
}
_MESSAGE_CHARS = 200  # decoder messages can quote file bytes; keep them short in the error column


class ImageError(ValueError):
    """An image that can't be used; ``error`` is the row's ``"<kind>: <detail>"`` string.

    A ``ValueError`` so code that already catches Pillow's ``ValueError`` handles it.
    """

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every image vlselect reads.

    Attributes:
        max_file_bytes: largest image file or embedded image, in bytes (default 64 MiB).
        max_image_pixels: most pixels of one image, from its header and after a model's resize; None means
            Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 unless changed).
        max_row_pixels: most pixels of all images of one row together (default 200 million).
        formats: Pillow format ids that may be opened (default :data:`ALLOWED_FORMATS`).

    Example:
        >>> ImageLimits(max_file_bytes=2**20).max_file_bytes
        1048576
    """

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_image_pixels: int | None = None
    max_row_pixels: int = DEFAULT_MAX_ROW_PIXELS
    formats: tuple[str, ...] = ALLOWED_FORMATS

    @classmethod
    def from_env(cls) -> ImageLimits:
        """The defaults, with any of ``VLSELECT_MAX_IMAGE_BYTES`` / ``_PIXELS`` / ``VLSELECT_MAX_ROW_PIXELS`` applied.

        Raises:
            ConfigError: a variable is set to something that is not a positive integer.
        """
        values = {}
        for field_name, variable in _ENV.items():
            raw = os.environ.get(variable)
            if raw is None or not raw.strip():
                continue
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                value = 0
            if value <= 0:
                from selector.errors import ConfigError

                raise ConfigError(f"{variable}={raw!r}: expected a positive integer")
            values[field_name] = value
        return cls(**values)

    def image_pixels(self) -> int | None:
        """The per-image pixel cap in force (``max_image_pixels`` or Pillow's current limit)."""
        return self.max_image_pixels if self.max_image_pixels is not None else Image.MAX_IMAGE_PIXELS


def _limits(limits: ImageLimits | None) -> ImageLimits:
    return limits if limits is not None else ImageLimits.from_env()


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _sniff_format(prefix: bytes, allowed: Sequence[str]) -> str | None:
    """The name of a format outside ``allowed`` whose signature ``prefix`` has, or None.

    Only Pillow's ``accept`` functions run: they compare the first bytes with a signature and never decode.
    """
    Image.init()
    for name in Image.ID:
        if name in allowed:
            continue
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is None:
            continue
        try:
            if accept(prefix) is True:
                return name
        except Exception:  # noqa: BLE001, S112 - a signature test that fails on odd bytes just doesn't match
            continue
    return None


# Paths.


def _inside(path: str, roots: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if os.path.commonpath([real, base]) == base:
            return True
    return False


def _outside(ref: str) -> str:
    return (
        f"image_outside_root: {ref} resolves outside the allowed image root(s); pass allow_outside_root=True "
        "(--allow-outside-root) to read it"
    )


def resolve_image_path(
    ref: str, roots: Sequence[str], *, allow_outside_root: bool = False, trusted_roots: Sequence[str] = ()
) -> tuple[str | None, str | None]:
    """The file to read for an image path from the data, or an error.

    A relative ``ref`` is looked up under each root in turn (the first root where it exists wins, even if the
    file is bad); an absolute one is taken as it is. The result, after symlinks (:func:`os.path.realpath`), must
    lie inside one of ``roots`` unless ``allow_outside_root``.

    Args:
        ref: the path as the data gives it.
        roots: the allowed image roots (absolute directories).
        allow_outside_root: read paths outside ``roots`` too.
        trusted_roots: further folders a path may resolve into, never searched for relative paths (the Hugging
            Face caches, where a Hub dataset's image files are downloaded).

    Returns:
        ``(path, None)``: the resolved path to read (it may not exist: :func:`read_image_file` says so), or
        ``(None, error)`` with kind ``image_outside_root`` or ``missing_image``.
    """
    if "\x00" in ref:
        return None, "missing_image: the image path contains a NUL character"
    try:
        os.fsencode(ref)
    except UnicodeEncodeError:  # a JSON-escaped lone surrogate ("\ud83d") names no file on any file system
        return None, f"missing_image: {ref.encode('utf-8', 'replace').decode('utf-8')} is not a valid file name"
    allowed = [*roots, *trusted_roots]
    if os.path.isabs(ref) or len(roots) <= 1:
        path = ref if os.path.isabs(ref) or not roots else os.path.join(roots[0], ref)
    else:
        candidates = [os.path.join(root, ref) for root in roots]
        path = next((c for c in candidates if os.path.lexists(c)), None)
        if path is None:
            if not allow_outside_root and not any(_inside(c, allowed) for c in candidates):
                return None, _outside(ref)
            return None, f"missing_image: {ref} not found in any image root ({', '.join(roots)})"
    if allow_outside_root or not roots:
        return path, None
    if not _inside(path, allowed):
        return None, _outside(ref)
    # Read the resolved file: a symlink swapped after this check can then no longer redirect the read.
    return os.path.realpath(path), None


def hub_cache_roots() -> tuple[str, ...]:
    """The Hugging Face caches (``datasets`` and Hub downloads): where a Hub dataset's image files may be."""
    import datasets
    from huggingface_hub import constants

    return tuple(os.path.abspath(str(p)) for p in (datasets.config.HF_DATASETS_CACHE, constants.HF_HUB_CACHE))


# Files and bytes.


def read_image_file(
    path: str, limits: ImageLimits | None = None, *, name: str | None = None, check: bool = True
) -> tuple[bytes | None, str | None]:
    """Read one image file: a regular file no larger than the cap, decoded once to check it (unless ``check``
    is False).

    Devices, FIFOs and sockets are refused from :func:`os.stat`, before they are opened; the file is then opened
    non-blocking and checked again on the open descriptor, so one swapped in between can't hang the read.

    Args:
        path: the file (already resolved, see :func:`resolve_image_path`).
        limits: the caps (default :meth:`ImageLimits.from_env`).
        name: how to name the file in error messages (default ``path``).
        check: also decode it (:func:`check_image_bytes`).

    Returns:
        ``(bytes, None)`` for a usable image, ``(None, error)`` otherwise.
    """
    limits = _limits(limits)
    name = name or path
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None, f"missing_image: {name} not found"
    except (OSError, ValueError) as exc:
        return None, f"missing_image: {name} can't be read ({getattr(exc, 'strerror', None) or exc})"
    error = _file_error(info, name, limits)
    if error:
        return None, error
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        return None, f"missing_image: {name} can't be read ({exc.strerror or exc})"
    with os.fdopen(fd, "rb") as handle:
        error = _file_error(os.fstat(handle.fileno()), name, limits)
        if error:
            return None, error
        try:
            data = handle.read(limits.max_file_bytes + 1)
        except OSError as exc:
            return None, f"missing_image: {name} can't be read ({exc.strerror or exc})"
    if len(data) > limits.max_file_bytes:  # it grew after the size check
        return None, _too_many_bytes(name, len(data), limits)
    if not check:
        return data, None
    error = check_image_bytes(data, name, limits)
    return (None, error) if error else (data, None)


def _file_error(info: os.stat_result, name: str, limits: ImageLimits) -> str | None:
    if stat.S_ISDIR(info.st_mode):
        return f"missing_image: {name} is a directory, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return f"missing_image: {name} is not a regular file (a device, FIFO or socket); it is not read"
    if info.st_size > limits.max_file_bytes:
        return _too_many_bytes(name, info.st_size, limits)
    return None


def _too_many_bytes(name: str, size: int, limits: ImageLimits) -> str:
    return (
        f"image_too_large: {name} is {size:,} bytes, over the {limits.max_file_bytes:,}-byte cap "
        "(VLSELECT_MAX_IMAGE_BYTES)"
    )


def open_image(data: bytes, name: str = "image", limits: ImageLimits | None = None) -> Image.Image:
    """Open encoded image bytes lazily: format allow-list and pixel cap checked from the header, nothing decoded.

    Args:
        data: the encoded bytes.
        name: how to name the image in error messages.
        limits: the caps (default :meth:`ImageLimits.from_env`).

    Returns:
        An unloaded ``PIL.Image.Image`` (decoding happens on ``load()`` or the first pixel access).

    Raises:
        ImageError: empty, too many bytes or pixels, a format outside the allow-list, or an unreadable header.
    """
    limits = _limits(limits)
    if not data:
        raise ImageError(f"empty_image: {name} has zero bytes")
    if len(data) > limits.max_file_bytes:
        raise ImageError(_too_many_bytes(name, len(data), limits))
    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit and raises at twice it; the cap below is the one that counts. Its
            # other warnings (corrupt EXIF, ...) would repeat for every damaged file; the check decides instead.
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError:
        other = _sniff_format(bytes(data[:16]), limits.formats)
        if other:
            raise ImageError(
                f"unsupported_image_format: {name} is {other}; allowed formats: {', '.join(limits.formats)}"
            ) from None
        raise ImageError(f"corrupt_image: {name} is not a recognised image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image_too_large: {name} is over Pillow's decompression-bomb limit ({exc})") from None
    except MemoryError:
        raise ImageError(f"image_too_large: {name} ran out of memory while its header was read") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is this image's error
        raise ImageError(f"corrupt_image: {name} is truncated or damaged ({_short(exc)})") from None
    fmt = _RESULT_FORMATS.get(image.format or "", image.format)
    if fmt not in limits.formats:
        image.close()
        raise ImageError(f"unsupported_image_format: {name} is {image.format}; allowed: {', '.join(limits.formats)}")
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise ImageError(f"corrupt_image: {name} has an empty size {width}x{height}")
    cap = limits.image_pixels()
    if cap is not None and width * height > cap:
        image.close()
        raise ImageError(
            f"image_too_large: {name} is {width}x{height} = {width * height:,} pixels, over the {cap:,}-pixel cap "
            "(Pillow's decompression-bomb limit; raise PIL.Image.MAX_IMAGE_PIXELS or VLSELECT_MAX_IMAGE_PIXELS "
            "if you trust it)"
        )
    return image


def _decode(image: Image.Image, name: str, action) -> Any:
    """Run ``action(image)`` (a decode or conversion), turning any failure into :class:`ImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return action(image)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"image_too_large: {name} ran out of memory while decoding") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image_too_large: {name} is over Pillow's decompression-bomb limit ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError (AVIF), NotImplementedError (DDS), struct.error, ...
        raise ImageError(f"corrupt_image: {name} is truncated or damaged ({_short(exc)})") from None


def check_image_bytes(data: bytes, name: str, limits: ImageLimits | None = None) -> str | None:
    """Return None when ``data`` is a complete, decodable image within the caps, else an ``error`` string.

    The size and format checks read only the header, so an image over the pixel cap is refused without being
    decoded.

    Args:
        data: the raw file bytes.
        name: how to name the image in the message (usually its path).
        limits: the caps (default :meth:`ImageLimits.from_env`).
    """
    try:
        image = open_image(data, name, limits)
    except ImageError as exc:
        return exc.error
    try:
        _decode(image, name, lambda img: img.load())
    except ImageError as exc:
        return exc.error
    finally:
        image.close()
    return None


def _image_bytes(value: Any, name: str, limits: ImageLimits) -> bytes:
    """Encoded bytes of a ``{"bytes", "path"}`` dict, bytes, or a path (read with the file rules, no root)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
        if not value:
            raise ImageError(f"missing_image: {name} has neither bytes nor a path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        data, error = read_image_file(os.fspath(value), limits, check=False)
        if error:
            raise ImageError(error)
        return data
    raise ImageError(f"missing_image: {name} is a {type(value).__name__}, not an image")


def open_any(value: Any, name: str = "image", limits: ImageLimits | None = None) -> Image.Image:
    """:func:`open_image` for any image value: a PIL image (returned as it is), a ``{"bytes", "path"}`` dict,
    bytes, or a file path. A path is read as a regular file within the byte cap; no root applies here (loaders
    check roots when they first read a path).

    Raises:
        ImageError: see :func:`open_image` and :func:`read_image_file`.
    """
    if isinstance(value, Image.Image):
        return value
    limits = _limits(limits)
    return open_image(_image_bytes(value, name, limits), name, limits)


def decode_rgb(value: Any, name: str = "image", limits: ImageLimits | None = None, *, draft: int | None = None):
    """Open and decode any image value to 8-bit RGB (:func:`selector.data.schema.to_rgb`), raising only
    :class:`ImageError`.

    Args:
        value: see :func:`open_any`.
        name: how to name the image in error messages.
        limits: the caps (default :meth:`ImageLimits.from_env`).
        draft: for JPEG, let the decoder work at a reduced scale of at least ``draft`` pixels a side (hashes and
            thumbnails need no more).
    """
    from selector.data.schema import to_rgb

    image = open_any(value, name, limits)

    def convert(img):
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()  # to_rgb returns an RGB image as it is: decode here, not later inside a model's processor
        return to_rgb(img)

    return _decode(image, name, convert)


# Rows.


def resized_size(size: tuple[int, int], processor: Any) -> tuple[int, int]:
    """The ``(width, height)`` a transformers image processor resizes an image of ``size`` to, before cropping.

    Understands ``size`` dicts with ``shortest_edge`` (CLIP, DINOv2, ...; with ``longest_edge`` as a bound when
    present), ``longest_edge`` alone, and ``height``/``width`` (SigLIP, ViT). Anything else, or ``do_resize``
    off, is taken as no resize.
    """
    width, height = size
    spec = getattr(processor, "size", None)
    if processor is None or getattr(processor, "do_resize", True) is False or spec is None:
        return width, height
    get = spec.get if isinstance(spec, dict) else lambda key: getattr(spec, key, None)
    if get("height") and get("width"):
        return int(get("width")), int(get("height"))
    short, long = get("shortest_edge"), get("longest_edge")
    scale = None
    if short:
        scale = short / min(width, height)
        if long and max(width, height) * scale > long:
            scale = long / max(width, height)
    elif long:
        scale = long / max(width, height)
    if scale is None:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_row_pixels(sizes: Sequence[tuple[int, int]], name: str, limits: ImageLimits | None = None) -> None:
    """Refuse a row whose images have more pixels together than ``limits.max_row_pixels``.

    Raises:
        ImageError: kind ``image_too_large``.
    """
    limits = _limits(limits)
    total = sum(w * h for w, h in sizes)
    if total > limits.max_row_pixels:
        raise ImageError(
            f"image_too_large: {name} has {len(sizes)} image(s) with {total:,} pixels together, over the "
            f"{limits.max_row_pixels:,}-pixel cap per row (VLSELECT_MAX_ROW_PIXELS)"
        )


def decode_row(values: Sequence[Any], name: str, limits: ImageLimits | None = None, *, processor: Any = None) -> list:
    """Decode every image of one row to RGB for a model, checking the caps from the headers first.

    Each image's pixels, and the pixels it would have after ``processor``'s resize (:func:`resized_size`; a
    1x60000 strip resized to a shortest edge of 224 would be 224x13,440,000), must stay under the per-image cap,
    and the row's images together under the per-row cap, before anything is decoded.

    Args:
        values: the row's images (see :func:`open_any`).
        name: how to name the row in error messages (its id).
        limits: the caps (default :meth:`ImageLimits.from_env`).
        processor: the model's image processor, if it resizes.

    Raises:
        ImageError: the first image that can't be used, or the row's total over the cap.
    """
    limits = _limits(limits)
    cap = limits.image_pixels()
    opened, sizes = [], []
    for k, value in enumerate(values):
        label = f"{name} image {k}" if len(values) > 1 else name
        image = open_any(value, label, limits)
        after = resized_size(image.size, processor)
        if cap is not None and after[0] * after[1] > cap:
            raise ImageError(
                f"image_too_large: {label} is {image.size[0]}x{image.size[1]}, {after[0]}x{after[1]} = "
                f"{after[0] * after[1]:,} pixels after the model's resize, over the {cap:,}-pixel cap"
            )
        opened.append((image, label))
        sizes.append(max(image.size, after, key=lambda s: s[0] * s[1]))
    check_row_pixels(sizes, name, limits)
    return [decode_rgb(image, label, limits) for image, label in opened]


def load_row_images(
    refs: Sequence[Any],
    roots: Sequence[str],
    *,
    allow_outside_root: bool = False,
    limits: ImageLimits | None = None,
    row_name: str = "the row",
    trusted_roots: Sequence[str] = (),
) -> tuple[list[dict | None], list[str]]:
    """Read and check every image a row names (the loaders' step): roots, file rules, header caps, then decode.

    The per-row pixel cap is checked from the headers of all the row's images before any of them is decoded;
    a row over it keeps no image.

    Args:
        refs: image references from the adapter: a path (relative to a root, or absolute), raw bytes, or a
            ``{"bytes", "path"}`` dict.
        roots: the allowed image roots, in lookup order.
        allow_outside_root: read paths outside ``roots`` too.
        limits: the caps (default :meth:`ImageLimits.from_env`).
        row_name: how to name the row in the per-row message.
        trusted_roots: see :func:`resolve_image_path`.

    Returns:
        ``(images, errors)``: one ``{"bytes", "path"}`` dict or None per ref, and the row's error strings.
    """
    limits = _limits(limits)
    images: list[dict | None] = []
    errors: list[str] = []
    sizes: list[tuple[int, int]] = []
    for ref in refs:
        image, error = _read_ref(ref, roots, allow_outside_root, limits, trusted_roots)
        if error is None:
            try:
                with open_image(image["bytes"], image["name"], limits) as opened:
                    sizes.append(opened.size)
            except ImageError as exc:
                image, error = None, exc.error
        images.append(image)
        if error:
            errors.append(error)
    try:
        check_row_pixels(sizes, row_name, limits)
    except ImageError as exc:
        return [None] * len(images), [*errors, exc.error]
    for k, image in enumerate(images):
        if image is None:
            continue
        error = check_image_bytes(image["bytes"], image["name"], limits)
        if error:
            images[k] = None
            errors.append(error)
    return [None if image is None else {"bytes": image["bytes"], "path": image["path"]} for image in images], errors


def _read_ref(ref: Any, roots: Sequence[str], allow_outside_root: bool, limits: ImageLimits, trusted_roots=()):
    """``({"bytes", "path", "name"}, None)`` or ``(None, error)`` for one adapter image reference."""
    if isinstance(ref, (bytes, bytearray)):
        return {"bytes": bytes(ref), "path": None, "name": "embedded image"}, None
    if isinstance(ref, dict) and ref.get("bytes"):
        data = ref["bytes"]
        if isinstance(data, str):
            # JSON can't hold bytes: messages rows carry embedded images as base64 text.
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return None, "corrupt_image: embedded image 'bytes' is a string that is not valid base64"
        if not isinstance(data, (bytes, bytearray)):
            return None, f"corrupt_image: embedded image bytes are a {type(data).__name__}, not bytes"
        path = ref.get("path") if isinstance(ref.get("path"), str) else None
        return {"bytes": bytes(data), "path": path, "name": path or "embedded image"}, None
    if isinstance(ref, dict):
        ref = ref.get("path")
    if not isinstance(ref, str) or not ref:
        return None, "missing_image: the row names an image without a path"
    path, error = resolve_image_path(ref, roots, allow_outside_root=allow_outside_root, trusted_roots=trusted_roots)
    if error:
        return None, error
    shown = ref if os.path.isabs(ref) or not roots else os.path.join(roots[0], ref) if len(roots) == 1 else ref
    data, error = read_image_file(path, limits, name=shown, check=False)
    if error:
        return None, error
    # The relative path is kept as the image's name so an exported subset can be written back the same way.
    return {"bytes": data, "path": ref, "name": shown}, None


__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_ROW_PIXELS",
    "ImageError",
    "ImageLimits",
    "check_image_bytes",
    "check_row_pixels",
    "decode_rgb",
    "decode_row",
    "hub_cache_roots",
    "load_row_images",
    "open_any",
    "open_image",
    "read_image_file",
    "resized_size",
    "resolve_image_path",
]
