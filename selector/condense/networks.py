"""The ConvNet of the dataset-condensation papers and the layer-wise gradient distance of DC.

:class:`ConvNet` is the network DC, DSA, DM, CAFE and IDM learn and evaluate with (Zhao et al., ICLR 2021,
"ConvNet"): ``depth`` blocks of 3x3 convolution (``width`` channels) -> instance norm -> ReLU -> 2x2 average
pooling, then one linear layer. Instance norm is ``GroupNorm(width, width)`` with an affine transform, as in the
official code. For grey images the first convolution pads 3 pixels instead of 1, so a 28x28 image becomes 32x32
after it (the official rule; a 28x28 Fashion-MNIST image ends in a 128x4x4 feature map).

:func:`match_loss` is DC's "ours" distance: for every weight tensor (not biases or norm parameters), the sum over
output units of ``1 - cos(g_real, g_syn)``, summed over layers. Range ``[0, 2 * n_units]``; 0 = identical
directions; lower is better.

Example:
    >>> import torch
    >>> net = ConvNet(channel=1, num_classes=10, im_size=(28, 28))
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> net.embed(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 2048])
"""

from __future__ import annotations

import torch
from torch import nn

from selector.errors import ConfigError

NORMS = ("instancenorm", "batchnorm", "groupnorm", "none")
POOLINGS = ("avgpooling", "maxpooling", "none")


class ConvNet(nn.Module):
    """The papers' ConvNet (default width 128, depth 3, instance norm, average pooling).

    Args:
        channel: input channels (1 for grey, 3 for RGB).
        num_classes: outputs of the linear classifier.
        width: channels of every convolution.
        depth: number of conv-norm-ReLU-pool blocks.
        norm: ``instancenorm`` (default), ``batchnorm``, ``groupnorm`` (4 groups) or ``none``.
        pooling: ``avgpooling`` (default), ``maxpooling`` or ``none``.
        im_size: ``(height, width)`` of the input images.
    """

    def __init__(
        self,
        channel: int,
        num_classes: int,
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        pooling: str = "avgpooling",
        im_size: tuple[int, int] = (32, 32),
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        layers: list[nn.Module] = []
        h, w = int(im_size[0]), int(im_size[1])
        in_channels = channel
        for d in range(depth):
            # the official rule: grey inputs get 3 pixels of padding in the first layer (28 -> 32 for MNIST)
            pad = 3 if channel == 1 and d == 0 else 1
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            if norm == "instancenorm":
                layers.append(nn.GroupNorm(width, width, affine=True))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width, affine=True))
            elif norm == "groupnorm":
                layers.append(nn.GroupNorm(4, width, affine=True))
            layers.append(nn.ReLU(inplace=True))
            if pooling != "none":
                if h < 2 or w < 2:
                    raise ConfigError(f"images of {im_size[0]}x{im_size[1]} are too small for a depth-{depth} ConvNet")
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.num_feat = width * h * w
        self.classifier = nn.Linear(self.num_feat, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened feature map before the classifier, ``(n, width * h * w)``."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's activation map (after its ReLU, before its pooling), then the final (pooled) map.

        ``depth + 1`` tensors, shallow to deep: the feature maps CAFE aligns layer by layer (its official network
        returns the same cuts of the same ConvNet).
        """
        feats = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                feats.append(x)
        feats.append(x)
        return feats


def make_network(spec: dict, seed: int) -> ConvNet:
    """A freshly initialised :class:`ConvNet` from ``spec`` (its keyword arguments) with weights drawn from ``seed``.

    The global torch generator is forked, so the draw depends only on ``seed`` (what makes a resumed run equal an
    uninterrupted one) and the caller's random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return ConvNet(**spec)


def _distance_wb(gwr: torch.Tensor, gws: torch.Tensor) -> torch.Tensor:
    if gwr.dim() == 1:
        # biases and norm parameters are left out, as in the official distance
        return gwr.new_zeros(())
    gwr = gwr.reshape(gwr.shape[0], -1)
    gws = gws.reshape(gws.shape[0], -1)
    cos = (gwr * gws).sum(-1) / (gwr.norm(dim=-1) * gws.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def match_loss(gw_syn, gw_real, metric: str = "ours") -> torch.Tensor:
    """Distance between two lists of per-parameter gradients (DC's gradient-matching loss; lower is closer).

    Args:
        gw_syn: gradients on the synthetic batch (with a graph back to the synthetic images).
        gw_real: gradients on the real batch (detached).
        metric: ``ours`` (layer-wise, per output unit ``1 - cos``, DC's default), ``mse`` (squared Euclidean
            distance of the flattened gradients) or ``cos`` (``1 - cos`` of the flattened gradients).
    """
    if metric == "ours":
        return sum(_distance_wb(r, s) for r, s in zip(gw_real, gw_syn))
    real = torch.cat([g.reshape(-1) for g in gw_real])
    syn = torch.cat([g.reshape(-1) for g in gw_syn])
    if metric == "mse":
        return ((syn - real) ** 2).sum()
    if metric == "cos":
        return 1 - (real * syn).sum() / (real.norm() * syn.norm() + 1e-6)
    raise ConfigError(f"unknown distance {metric!r}; choose ours, mse or cos")
