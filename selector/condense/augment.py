"""Differentiable Siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

One augmentation is *sampled* (:func:`sample_augmentation`) and then *applied* (:class:`Augmentation`) to any
number of batches: with ``siamese=True`` every image of every batch gets the same parameters, which is what DSA
needs (the real and the synthetic batch see one transformation, so their gradients stay comparable). Every op is
differentiable with respect to the images, so the matching loss back-propagates through it to the synthetic
pixels.

Ops and their parameters (the official ``ParamDiffAug`` defaults, :class:`DSAParams`); one op family is drawn
uniformly per sample from the ``strategy`` (``"color_crop_cutout_flip_scale_rotate"``), as in the official
single-op mode ``'S'``:

- ``color``: brightness ``x + (b - 0.5) * 1.0``, then saturation ``(x - mean_c) * (2.0 * s) + mean_c``, then
  contrast ``(x - mean) * (c + 0.5) + mean``; ``b, s, c ~ U(0, 1)``.
- ``crop``: translate by up to ``0.125`` of the side (integer pixels), zero fill.
- ``cutout``: zero a square of half the side at a random centre (clipped at the border).
- ``flip``: horizontal flip with probability 0.5.
- ``scale``: stretch x and y independently by factors in ``[1/1.2, 1.2]`` (bilinear resampling).
- ``rotate``: rotate by up to 15 degrees either way (bilinear resampling).

Where we differ from the official code: parameters come from an explicit ``torch.Generator`` instead of
re-seeding the global generator before every draw, so one sampled augmentation is a value that can be applied to
both batches (and a run is reproducible and resumable); ``grid_sample`` uses ``align_corners=False`` (the current
torch default the official code runs with).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> aug = sample_augmentation(g, image_size=(16, 16))
    >>> real, syn = torch.rand(8, 1, 16, 16), torch.rand(2, 1, 16, 16)
    >>> aug(real).shape, aug(syn).shape
    (torch.Size([8, 1, 16, 16]), torch.Size([2, 1, 16, 16]))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from selector.errors import ConfigError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """Strengths of the DSA ops (the official ``ParamDiffAug`` values)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """The op families of an underscore-joined ``strategy``; ``None``/``"none"``/``""`` is no augmentation."""
    if strategy is None or str(strategy).lower() in ("none", ""):
        return ()
    ops = tuple(str(strategy).split("_"))
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ConfigError(f"unknown DSA op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    return ops


class Augmentation:
    """One sampled augmentation: an op family and its parameter tensors (length 1 when Siamese, else per image).

    Calling it on a batch ``(n, c, h, w)`` applies exactly these parameters; a Siamese draw broadcasts to any
    ``n``, a per-image draw needs the ``n`` it was sampled for.
    """

    def __init__(self, op: str | None, values: dict[str, torch.Tensor], n: int | None) -> None:
        self.op = op
        self.values = values
        self.n = n

    def __repr__(self) -> str:
        return f"Augmentation(op={self.op!r}, siamese={self.n is None})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.op is None:
            return x
        if self.n is not None and x.shape[0] != self.n:
            raise ValueError(f"this augmentation was sampled per image for {self.n} images, got {x.shape[0]}")
        v = {k: t.to(x.device, x.dtype) if t.is_floating_point() else t.to(x.device) for k, t in self.values.items()}
        return getattr(self, f"_{self.op}")(x, v).contiguous()

    @staticmethod
    def _color(x, v):
        b, s, c = (v[k].reshape(-1, 1, 1, 1) for k in ("brightness", "saturation", "contrast"))
        x = x + (b - 0.5) * v["brightness_ratio"]
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (s * v["saturation_ratio"]) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (c + v["contrast_ratio"]) + mean

    @staticmethod
    def _crop(x, v):
        n, _, h, w = x.shape
        # pad one pixel of zeros and clamp the indices into it: a shift of k pixels fills k rows/columns with zeros
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
        tx = v["tx"].reshape(-1, 1, 1)
        ty = v["ty"].reshape(-1, 1, 1)
        gx = (torch.arange(h, device=x.device).reshape(1, h, 1) + tx + 1).clamp(0, h + 1)
        gy = (torch.arange(w, device=x.device).reshape(1, 1, w) + ty + 1).clamp(0, w + 1)
        b = torch.arange(n, device=x.device).reshape(n, 1, 1)
        return padded[b, gx.expand(n, h, w), gy.expand(n, h, w)].permute(0, 3, 1, 2)

    @staticmethod
    def _cutout(x, v):
        _, _, h, w = x.shape
        sx, sy = int(v["size_x"]), int(v["size_y"])
        ox = v["ox"].reshape(-1, 1, 1)
        oy = v["oy"].reshape(-1, 1, 1)
        rows = torch.arange(h, device=x.device).reshape(1, h, 1)
        cols = torch.arange(w, device=x.device).reshape(1, 1, w)
        inside_x = (rows >= ox - sx // 2) & (rows < ox - sx // 2 + sx)
        inside_y = (cols >= oy - sy // 2) & (cols < oy - sy // 2 + sy)
        mask = (~(inside_x & inside_y)).to(x.dtype).unsqueeze(1)
        return x * mask

    @staticmethod
    def _flip(x, v):
        return torch.where(v["flip"].reshape(-1, 1, 1, 1) < v["prob"], x.flip(3), x)

    @staticmethod
    def _affine(x, theta):
        theta = theta.expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def _scale(self, x, v):
        sx, sy = v["sx"], v["sy"]
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
        return self._affine(x, theta)

    def _rotate(self, x, v):
        a = v["angle"]
        zero = torch.zeros_like(a)
        theta = torch.stack([torch.stack([a.cos(), -a.sin(), zero], -1), torch.stack([a.sin(), a.cos(), zero], -1)], 1)
        return self._affine(x, theta)


def sample_augmentation(
    generator: torch.Generator,
    *,
    strategy: str | None = DEFAULT_STRATEGY,
    params: DSAParams | None = None,
    image_size: tuple[int, int] | None = None,
    n: int | None = None,
) -> Augmentation:
    """Draw one augmentation: an op family uniformly from ``strategy``, then its parameters.

    Args:
        generator: the source of every random number (CPU generator).
        strategy: underscore-joined op families (default all six); ``None`` or ``"none"``: the identity.
        params: op strengths (default :class:`DSAParams`).
        image_size: ``(h, w)``; needed by ``crop`` and ``cutout`` (their sizes are fractions of the side).
        n: None for a Siamese draw (one set of parameters for every image of every batch), or the batch size for
            independent parameters per image (DSA's evaluation-time augmentation).
    """
    ops = parse_strategy(strategy)
    if not ops:
        return Augmentation(None, {}, n)
    params = params or DSAParams()
    op = ops[int(torch.randint(len(ops), (1,), generator=generator))]
    m = 1 if n is None else int(n)

    def rand() -> torch.Tensor:
        return torch.rand(m, generator=generator)

    if op in ("crop", "cutout") and image_size is None:
        raise ValueError("image_size is needed to sample crop and cutout")
    values: dict[str, torch.Tensor]
    if op == "color":
        values = {
            "brightness": rand(),
            "saturation": rand(),
            "contrast": rand(),
            "brightness_ratio": torch.tensor(params.brightness),
            "saturation_ratio": torch.tensor(params.saturation),
            "contrast_ratio": torch.tensor(params.contrast),
        }
    elif op == "crop":
        h, w = image_size
        shift_x, shift_y = int(h * params.ratio_crop_pad + 0.5), int(w * params.ratio_crop_pad + 0.5)
        values = {
            "tx": torch.randint(-shift_x, shift_x + 1, (m,), generator=generator),
            "ty": torch.randint(-shift_y, shift_y + 1, (m,), generator=generator),
        }
    elif op == "cutout":
        h, w = image_size
        size_x, size_y = int(h * params.ratio_cutout + 0.5), int(w * params.ratio_cutout + 0.5)
        values = {
            "size_x": torch.tensor(size_x),
            "size_y": torch.tensor(size_y),
            "ox": torch.randint(0, h + (1 - size_x % 2), (m,), generator=generator),
            "oy": torch.randint(0, w + (1 - size_y % 2), (m,), generator=generator),
        }
    elif op == "flip":
        values = {"flip": rand(), "prob": torch.tensor(params.prob_flip)}
    elif op == "scale":
        r = params.ratio_scale
        values = {"sx": rand() * (r - 1.0 / r) + 1.0 / r, "sy": rand() * (r - 1.0 / r) + 1.0 / r}
    else:
        values = {"angle": (rand() - 0.5) * 2 * params.ratio_rotate / 180 * math.pi}
    return Augmentation(op, values, n)


def diff_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    strategy: str | None = DEFAULT_STRATEGY,
    params: DSAParams | None = None,
    siamese: bool = False,
) -> torch.Tensor:
    """Sample one augmentation for ``x`` and apply it (per-image parameters unless ``siamese``)."""
    aug = sample_augmentation(
        generator, strategy=strategy, params=params, image_size=tuple(x.shape[-2:]), n=None if siamese else x.shape[0]
    )
    return aug(x)
