"""Condensation methods: one class per method, one registry, one step contract.

A method learns ``ipc`` synthetic images per class. The shared loop in :mod:`selector.condense.api` owns the
synthetic images, their optimiser (SGD, momentum 0.5, ``lr_img``), the iteration counter, checkpoints and the
random numbers; a method only says how one outer iteration updates the images (:meth:`CondensationMethod.step`)
and what it minimises (:meth:`CondensationMethod.matching_loss`). Every random draw of iteration ``t`` comes
from :class:`StepContext`'s generators, seeded by ``(seed, t)``: a resumed run repeats an uninterrupted one.

Methods (the VICO-UoE DatasetCondensation code is the reference for every default):

- ``dc`` — Dataset Condensation with gradient matching (Zhao, Mopuri, Bilen, ICLR 2021). Each outer iteration
  draws a fresh ConvNet; ``outer_loop`` times: per class, the gradient of the cross-entropy on ``batch_real``
  real images and on the class's synthetic images are compared with :func:`~selector.condense.networks.match_loss`
  (layer-wise ``1 - cos``), the summed loss updates the images, then the network trains ``inner_loop`` epochs on
  the synthetic set (SGD ``lr_net``, batches of ``batch_train``). ``outer_loop``/``inner_loop`` per ipc are the
  official ``get_loops`` table (1 -> 1/1, 10 -> 10/50, 20 -> 20/25, 30 -> 30/20, 40 -> 40/15, 50 -> 50/10);
  other ipc (the official code stops there) use ``outer = ipc`` and ``inner = clip(round(500 / ipc), 10, 50)``.
  1,000 iterations, ``lr_img`` 0.1, evaluation without augmentation for 300 epochs (the official setting for
  Fashion-MNIST / CIFAR with ConvNet; only MNIST uses DC's crop-scale-rotate augmentation).
- ``dsa`` — DC with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021): the same loop, but one DSA
  draw (:mod:`selector.condense.augment`) per class and matching step is applied to both the real and the
  synthetic batch, and the inner-loop training and the evaluation use (per-image) DSA; evaluation 1,000 epochs.
- ``dm`` — Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023): each iteration draws a
  fresh ConvNet (frozen), and per class minimises ``|| mean embed(aug(real)) - mean embed(aug(syn)) ||^2`` with one
  Siamese DSA draw per class; no inner loop. 20,000 iterations, ``lr_img`` 1.0, DSA evaluation, 1,000 epochs.

Every method initialises from random real images by default (``init="real"``, the DSA and DM scripts' setting;
the DC script's default was noise, available as ``init="noise"``).

- ``cafe`` (:mod:`selector.condense.cafe`) and ``idm`` (:mod:`selector.condense.idm`): see their modules.

Adding a method (CAFE and IDM do): subclass :class:`CondensationMethod`, set ``name``, ``defaults`` and the
evaluation protocol, implement ``step`` and ``matching_loss`` (and ``state_dict``/``load_state_dict`` if it
carries state across iterations; ``init_images``/``training_set`` if it stores images in its own form), and add
it to :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from selector.condense.augment import DEFAULT_STRATEGY, DSAParams, parse_strategy, sample_augmentation
from selector.condense.networks import ConvNet, match_loss
from selector.errors import ConfigError, DataError

#: the official ``get_loops`` table: ipc -> (outer_loop, inner_loop)
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
    """``(outer_loop, inner_loop)`` of DC/DSA for ``ipc`` (the official table; see the module docstring)."""
    if ipc in DC_LOOPS:
        return DC_LOOPS[ipc]
    return int(ipc), int(min(50, max(10, round(500 / ipc))))


class RealData:
    """The real training images (normalised float tensor ``(n, c, h, w)``) and labels ``0..k-1``, by class.

    Args:
        images: float tensor, already normalised with the per-channel ``mean``/``std`` the run uses.
        labels: int labels; every class ``0..num_classes-1`` must have at least one image.
        num_classes: number of classes (default ``labels.max() + 1``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes = int(num_classes if num_classes is not None else int(self.labels.max()) + 1)
        lab = self.labels.numpy()
        self.indices = [np.flatnonzero(lab == c) for c in range(self.num_classes)]
        empty = [c for c, idx in enumerate(self.indices) if idx.size == 0]
        if empty:
            raise DataError(f"class(es) {empty} have no images")

    @property
    def channel(self) -> int:
        return int(self.images.shape[1])

    @property
    def im_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def sample(self, c: int, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` random images of class ``c`` without replacement (all of them when the class is smaller)."""
        idx = self.indices[c]
        pick = rng.permutation(idx.size)[: min(int(n), idx.size)]
        return self.images[torch.from_numpy(idx[pick])]


@dataclass
class StepContext:
    """What one outer iteration may use; every random draw comes from ``generator`` / ``rng``."""

    real: RealData
    images: torch.Tensor  # the synthetic images (leaf, requires_grad), class-major: ipc images of class 0 first
    labels: torch.Tensor
    ipc: int
    optimizer: torch.optim.Optimizer
    make_net: Callable[[int], ConvNet]  # seed -> fresh network
    iteration: int
    generator: torch.Generator
    rng: np.random.Generator
    extra: dict[str, Any] = field(default_factory=dict)

    def class_images(self, c: int, images: torch.Tensor | None = None) -> torch.Tensor:
        images = self.images if images is None else images
        return images[c * self.ipc : (c + 1) * self.ipc]

    def net_seed(self) -> int:
        """A seed for a fresh network, drawn from this iteration's ``rng``."""
        return int(self.rng.integers(2**31 - 1))

    def update_images(self, loss: torch.Tensor) -> None:
        """One optimiser step on the synthetic images from ``loss`` (gradients flow to the images only)."""
        (grad,) = torch.autograd.grad(loss, self.images)
        self.optimizer.zero_grad(set_to_none=True)
        self.images.grad = grad
        self.optimizer.step()


class CondensationMethod:
    """Base class: options with the paper's defaults, the evaluation protocol, and the step contract.

    Class attributes: ``name``; ``paper``; ``defaults`` (every option and its paper default: ``iterations``,
    ``lr_img``, ``batch_real``, ...); ``eval_augment`` (DSA strategy used when the synthetic set is evaluated,
    or None); ``eval_epochs`` (training epochs of each evaluation network).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    eval_augment: ClassVar[str | None] = None
    eval_epochs: ClassVar[int] = 300

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(self.defaults))}"
            )
        self.options = {**self.defaults, **{k: v for k, v in options.items() if v is not None}}
        self.dsa_params = DSAParams()

    def resolved(self, ipc: int) -> dict[str, Any]:
        """Every option with its value for ``ipc`` (what the manifest and card record)."""
        return dict(self.options)

    def step(self, ctx: StepContext) -> float:
        """Run one outer iteration (update ``ctx.images`` in place); return the mean matching loss."""
        raise NotImplementedError

    def matching_loss(self, ctx: StepContext, net: ConvNet) -> torch.Tensor:
        """The loss this method minimises for one network and one draw of real batches (summed over classes)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors carried from one iteration to the next (checkpointed); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`."""

    def init_images(self, real: RealData, ipc: int, init: str, rng: np.random.Generator) -> torch.Tensor | None:
        """The method's own initial synthetic images (class-major), or None for the shared ``init`` rule."""
        return None

    def training_set(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set a network learns from the stored synthetic images (evaluation); the images themselves
        unless the method stores them in another form (IDM's 2x2 partitioned images)."""
        return images, labels

    def augmentation(self, ctx: StepContext, strategy: str | None):
        """One Siamese DSA draw for the current images."""
        return sample_augmentation(
            ctx.generator, strategy=strategy, params=self.dsa_params, image_size=ctx.real.im_size
        )

    def class_batches(self, ctx: StepContext, c: int, strategy: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class ``c``'s real batch (``batch_real`` samples) and its synthetic images, both through one sampled DSA
        augmentation when ``strategy`` names any op (Siamese: the same draw for both)."""
        real = ctx.real.sample(c, self.options["batch_real"], ctx.rng)
        syn = ctx.class_images(c)
        if parse_strategy(strategy):
            aug = self.augmentation(ctx, strategy)
            real, syn = aug(real), aug(syn)
        return real, syn


class DC(CondensationMethod):
    """Gradient matching (DC); see the module docstring."""

    name = "dc"
    paper = "Zhao, Mopuri, Bilen. Dataset Condensation with Gradient Matching. ICLR 2021"
    defaults = {
        "iterations": 1000,
        "lr_img": 0.1,
        "lr_net": 0.01,
        "batch_real": 256,
        "batch_train": 256,
        "outer_loop": None,
        "inner_loop": None,
        "dis_metric": "ours",
        "init": "real",
    }
    eval_augment = None
    eval_epochs = 300
    #: DSA strategy of the matching step and inner loop (None for plain DC)
    match_augment: ClassVar[str | None] = None

    def resolved(self, ipc: int) -> dict[str, Any]:
        out = dict(self.options)
        outer, inner = dc_loops(ipc)
        out["outer_loop"] = int(out["outer_loop"] or outer)
        out["inner_loop"] = int(out["inner_loop"] or inner)
        return out

    def _strategy(self) -> str | None:
        return self.options.get("dsa_strategy", self.match_augment)

    def matching_loss(self, ctx: StepContext, net: ConvNet) -> torch.Tensor:
        params = list(net.parameters())
        strategy = self._strategy()
        loss = ctx.images.new_zeros(())
        for c in range(ctx.real.num_classes):
            real, syn = self.class_batches(ctx, c, strategy)
            target_real = torch.full((real.shape[0],), c, dtype=torch.long)
            target_syn = torch.full((syn.shape[0],), c, dtype=torch.long)
            gw_real = torch.autograd.grad(F.cross_entropy(net(real), target_real), params)
            gw_real = [g.detach() for g in gw_real]
            gw_syn = torch.autograd.grad(F.cross_entropy(net(syn), target_syn), params, create_graph=True)
            loss = loss + match_loss(gw_syn, gw_real, self.options["dis_metric"])
        return loss

    def step(self, ctx: StepContext) -> float:
        opts = self.resolved(ctx.ipc)
        net = ctx.make_net(ctx.net_seed())
        net.train()
        optimizer_net = torch.optim.SGD(net.parameters(), lr=opts["lr_net"])
        total = 0.0
        for ol in range(opts["outer_loop"]):
            loss = self.matching_loss(ctx, net)
            ctx.update_images(loss)
            total += float(loss.detach())
            if ol == opts["outer_loop"] - 1:
                break
            train_epochs(
                net,
                optimizer_net,
                ctx.images.detach(),
                ctx.labels,
                epochs=opts["inner_loop"],
                batch_size=opts["batch_train"],
                generator=ctx.generator,
                augment=self._strategy(),
                params=self.dsa_params,
            )
        return total / (ctx.real.num_classes * opts["outer_loop"])


class DSA(DC):
    """DC with differentiable Siamese augmentation; see the module docstring."""

    name = "dsa"
    paper = "Zhao, Bilen. Dataset Condensation with Differentiable Siamese Augmentation. ICML 2021"
    defaults = {**DC.defaults, "dsa_strategy": DEFAULT_STRATEGY}
    eval_augment = DEFAULT_STRATEGY
    eval_epochs = 1000
    match_augment = DEFAULT_STRATEGY


class DM(CondensationMethod):
    """Distribution matching; see the module docstring."""

    name = "dm"
    paper = "Zhao, Bilen. Dataset Condensation with Distribution Matching. WACV 2023"
    defaults = {
        "iterations": 20000,
        "lr_img": 1.0,
        "batch_real": 256,
        "dsa_strategy": DEFAULT_STRATEGY,
        "init": "real",
    }
    eval_augment = DEFAULT_STRATEGY
    eval_epochs = 1000

    def matching_loss(self, ctx: StepContext, net: ConvNet) -> torch.Tensor:
        loss = ctx.images.new_zeros(())
        strategy = self.options["dsa_strategy"]
        for c in range(ctx.real.num_classes):
            real, syn = self.class_batches(ctx, c, strategy)
            with torch.no_grad():
                mean_real = net.embed(real).mean(0)
            loss = loss + ((mean_real - net.embed(syn).mean(0)) ** 2).sum()
        return loss

    def step(self, ctx: StepContext) -> float:
        net = ctx.make_net(ctx.net_seed())
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        loss = self.matching_loss(ctx, net)
        ctx.update_images(loss)
        return float(loss.detach()) / ctx.real.num_classes


def train_epochs(
    net: ConvNet,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    augment: str | None = None,
    params: DSAParams | None = None,
) -> float:
    """Train ``net`` for ``epochs`` shuffled epochs on ``(images, labels)``; return the last epoch's accuracy.

    With ``augment`` (a DSA strategy), each batch gets one DSA draw with independent parameters per image (the
    official evaluation-time augmentation).
    """
    net.train()
    n = images.shape[0]
    correct = 0
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=generator)
        correct = 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None and parse_strategy(augment):
                aug = sample_augmentation(
                    generator, strategy=augment, params=params, image_size=tuple(x.shape[-2:]), n=x.shape[0]
                )
                x = aug(x)
            out = net(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((out.argmax(1) == y).sum())
    return correct / max(n, 1)


# CAFE and IDM live in their own modules and build on the classes above
from selector.condense.cafe import CAFE  # noqa: E402
from selector.condense.idm import IDM  # noqa: E402

#: method name -> class
METHODS: dict[str, type[CondensationMethod]] = {"dc": DC, "dsa": DSA, "dm": DM, "cafe": CAFE, "idm": IDM}


def get_method(name: str, **options: Any) -> CondensationMethod:
    """An instance of the registered method ``name`` with ``options`` (unknown options are a ConfigError)."""
    key = str(name).lower()
    if key not in METHODS:
        raise ConfigError(f"unknown condensation method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[key](**options)


def available_methods() -> list[str]:
    """Names of the registered condensation methods."""
    return list(METHODS)
