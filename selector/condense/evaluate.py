"""The papers' evaluation protocol: train fresh ConvNets on a (synthetic or real) training set, test them.

Each run draws a fresh :class:`~selector.condense.networks.ConvNet` (seed ``seed + run``) and trains it for
``epochs`` epochs with SGD (lr 0.01, momentum 0.9, weight decay 5e-4, batches of 256); the learning rate drops
tenfold after ``epochs // 2 + 1`` epochs (the official ``evaluate_synset``; "halved" in some summaries, but the
code multiplies by 0.1). With ``augment`` (a DSA strategy) every batch gets per-image DSA, as DSA and DM evaluate;
DC on Fashion-MNIST/CIFAR evaluates without augmentation. The test accuracy of every run is reported; its mean
and standard deviation (ddof 0, as the papers' ``np.std``) summarise them.

The official protocol trains 20 networks for 300 (no augmentation) or 1,000 epochs (with augmentation); both are
options here, because on a CPU they are the expensive part.

Example:
    >>> import torch
    >>> x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 2
    >>> result = evaluate_synthetic(x, y, x, y, runs=2, epochs=5, net={"width": 8})
    >>> len(result.accuracies)
    2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selector.condense.methods import train_epochs
from selector.condense.networks import make_network


@dataclass
class EvalResult:
    """Test accuracies (fraction correct in [0, 1], higher is better) of ``runs`` freshly trained networks."""

    accuracies: list[float]
    epochs: int
    augment: str | None

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies)) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies)) if self.accuracies else float("nan")

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "accuracies": [float(a) for a in self.accuracies],
            "runs": len(self.accuracies),
            "epochs": self.epochs,
            "augment": self.augment,
        }


def test_accuracy(net, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``images`` that ``net`` classifies as ``labels`` (eval mode, no gradients)."""
    net.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            out = net(images[start : start + batch_size])
            correct += int((out.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(int(images.shape[0]), 1)


def train_and_test(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    net: dict,
    epochs: int,
    seed: int,
    lr: float = 0.01,
    batch_size: int = 256,
    augment: str | None = None,
) -> float:
    """Train one fresh network (the protocol in the module docstring) and return its test accuracy."""
    model = make_network(net, seed)
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    decay_at = epochs // 2 + 1
    images = train_images.detach().float()
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    # the official loop runs epochs + 1 epochs and decays after epoch index epochs // 2 + 1
    first = min(decay_at + 1, epochs + 1)
    train_epochs(
        model, optimizer, images, labels, epochs=first, batch_size=batch_size, generator=generator, augment=augment
    )
    if epochs + 1 > first:
        # the official code builds a new optimiser at the decay: the momentum restarts from zero
        optimizer = torch.optim.SGD(model.parameters(), lr=lr * 0.1, momentum=0.9, weight_decay=0.0005)
        rest = epochs + 1 - first
        train_epochs(
            model, optimizer, images, labels, epochs=rest, batch_size=batch_size, generator=generator, augment=augment
        )
    return test_accuracy(model, test_images.float(), torch.as_tensor(test_labels, dtype=torch.long))


def evaluate_synthetic(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    runs: int = 5,
    epochs: int = 300,
    augment: str | None = None,
    net: dict | None = None,
    seed: int = 0,
    lr: float = 0.01,
    batch_size: int = 256,
) -> EvalResult:
    """Train ``runs`` fresh ConvNets on the training set and test each (see the module docstring).

    Args:
        train_images: the (synthetic) training images ``(n, c, h, w)``, normalised like the test images.
        train_labels: their int labels.
        test_images: the test images.
        test_labels: their int labels.
        runs: networks to train (the papers use 20).
        epochs: training epochs per network (papers: 300 without augmentation, 1,000 with).
        augment: DSA strategy for training-time augmentation, or None.
        net: ConvNet keyword arguments (``channel``, ``num_classes``, ``im_size`` default from the data).
        seed: network ``r`` uses seed ``seed + r``.
    """
    spec = {
        "channel": int(train_images.shape[1]),
        "num_classes": int(max(int(torch.as_tensor(train_labels).max()), int(torch.as_tensor(test_labels).max())) + 1),
        "im_size": (int(train_images.shape[2]), int(train_images.shape[3])),
        **(net or {}),
    }
    accs = [
        train_and_test(
            train_images,
            train_labels,
            test_images,
            test_labels,
            net=spec,
            epochs=epochs,
            seed=seed + r,
            lr=lr,
            batch_size=batch_size,
            augment=augment,
        )
        for r in range(int(runs))
    ]
    return EvalResult(accs, int(epochs), augment)
