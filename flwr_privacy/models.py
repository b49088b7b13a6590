"""The papers' networks: FedAvg's 2NN and CNN, DSSGD's MLP and CNN, Tramer & Boneh's DP models, ResNet-20 and VGG
for CIFAR-10."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MLP2NN(nn.Module):
    """FedAvg's "2NN": two hidden layers of 200 ReLU units (McMahan et al. 2017, Sec. 3)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...] = (200, 200)):
        super().__init__()
        sizes = [in_shape[0] * in_shape[1] * in_shape[2], *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two 5x5 conv layers, each with 2x2 max pooling, a dense layer, and a linear output.

    With channels (32, 64) and 512 dense units this is FedAvg's CNN (1,663,370 parameters on MNIST).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int] = (32, 64),
        dense: int = 512,
    ):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, channels[0], 5, padding=2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5, padding=2)
        self.fc1 = nn.Linear(channels[1] * (h // 4) * (w // 4), dense)
        self.fc2 = nn.Linear(dense, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class TanhCNN(nn.Module):
    """Tramer & Boneh's end-to-end CNN for DP-SGD on MNIST (2021, Table 9, after Papernot et al. 2021's
    tempered sigmoids): 16 8x8 filters (stride 2, padding 2), 32 4x4 filters (stride 2), each followed by
    tanh and 2x2 max pooling of stride 1, 32 tanh units, a linear output; 26,010 parameters on MNIST.
    Small and bounded, as DP-SGD wants: fewer coordinates to noise, activations that do not blow up."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, 16, 8, stride=2, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2)
        side = lambda n: ((n + 4 - 8) // 2 + 1 - 1 - 4) // 2 + 1 - 1  # noqa: E731 (the two conv+pool stages)
        self.fc1 = nn.Linear(32 * side(h) * side(w), 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2, stride=1)
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2, stride=1)
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


class ScatterLinear(nn.Module):
    """Tramer & Boneh's (2021) linear model on ScatterNet features (``features=scatternet``): the
    coefficients normalised per example by a GroupNorm without parameters (27 groups, theirs), then one
    linear layer. On MNIST's 81 x 7 x 7 features, 39,700 parameters; on CIFAR-10's 243 x 8 x 8, 155,530."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, groups: int = 27):
        super().__init__()
        c, h, w = in_shape
        if c % groups:
            raise ValueError(
                f"model=scatter-linear takes ScatterNet features (channels a multiple of {groups}), got input "
                f"{in_shape}: set features=scatternet"
            )
        self.norm = nn.GroupNorm(groups, c, affine=False)
        self.fc = nn.Linear(c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).flatten(1))


class _BasicBlock(nn.Module):
    """ResNet basic block with the parameter-free "option A" shortcut of He et al. (2016) for CIFAR."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for 32x32 images (He et al. 2016, Sec. 4.2); n=3 is ResNet-20."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, n: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


VGG_LAYOUTS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman 2015) with batch norm, as commonly adapted to 32x32 CIFAR images."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, layout: str = "vgg11"):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_shape[0]
        for v in VGG_LAYOUTS[layout]:
            if isinstance(v, str):  # "M"
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "mlp": MLP2NN,
    "cnn": CNN,
    # Shokri & Shmatikov (2015), Sec. 6: MLP with hidden layers of 128 and 64 ReLU units.
    "dssgd-mlp": lambda s, k: MLP2NN(s, k, hidden=(128, 64)),
    # Shokri & Shmatikov (2015), Sec. 6: two conv + max-pool layers (32 and 64 maps), 200 dense units.
    "dssgd-cnn": lambda s, k: CNN(s, k, channels=(32, 64), dense=200),
    # Tramer & Boneh (2021): the end-to-end tanh CNN their DP-SGD MNIST results use.
    "tanh-cnn": TanhCNN,
    # Tramer & Boneh (2021): a linear model on ScatterNet features (features=scatternet).
    "scatter-linear": ScatterLinear,
    "resnet20": ResNetCIFAR,
    "vgg11": lambda s, k: VGG(s, k, "vgg11"),
    "vgg16": lambda s, k: VGG(s, k, "vgg16"),
}


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, seed: int = 0) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights in every process."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; allowed: {sorted(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](in_shape, num_classes)
