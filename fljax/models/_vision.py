"""Image models of healthcare FL papers: ResNets and EfficientNet-B0, with group norm.

Batch norm's running statistics are a known problem in FL (they average badly across non-IID
sites; Hsieh et al. 2020, "The Non-IID Data Quagmire", replace it with group norm), so both
families normalise with :class:`flax.linen.GroupNorm`. Convolutions are
:class:`fljax.models._layers.Conv` (``conv="dot"`` or ``"xla"``, same parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from fljax.models._layers import Conv, max_pool


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"norm_groups={groups} does not divide a layer's {channels} channels")
    return nn.GroupNorm(num_groups=groups)


class _BasicBlock(nn.Module):
    """He et al. 2016 (Fig. 2 left): two 3x3 convolutions and an identity (or 1x1 projection)
    shortcut, ``relu(F(x) + shortcut(x))``, each convolution followed by group norm."""

    features: int
    strides: int
    groups: int
    conv: str

    @nn.compact
    def __call__(self, x):
        f, g = self.features, self.groups
        y = Conv(f, (3, 3), self.strides, use_bias=False, impl=self.conv)(x)
        y = nn.relu(_norm(g, f)(y))
        y = _norm(g, f)(Conv(f, (3, 3), 1, use_bias=False, impl=self.conv)(y))
        if self.strides != 1 or x.shape[-1] != f:
            x = _norm(g, f)(Conv(f, (1, 1), self.strides, use_bias=False, impl=self.conv)(x))
        return nn.relu(x + y)


class _ResNet(nn.Module):
    num_classes: int
    stages: Sequence[int]
    width: int
    groups: int
    conv: str
    stem: str

    @nn.compact
    def __call__(self, x):
        if x.ndim == 3:
            x = x[..., None]
        if self.stem == "large":  # 7x7 stride 2, then a 2x2 max-pool (torchvision: 3x3, pad 1)
            x = Conv(self.width, (7, 7), 2, use_bias=False, impl=self.conv)(x)
            x = max_pool(nn.relu(_norm(self.groups, self.width)(x)))
        else:  # CIFAR stem: one 3x3 convolution at full resolution
            x = Conv(self.width, (3, 3), 1, use_bias=False, impl=self.conv)(x)
            x = nn.relu(_norm(self.groups, self.width)(x))
        for i, blocks in enumerate(self.stages):
            for j in range(blocks):
                x = _BasicBlock(self.width * 2**i, 2 if i > 0 and j == 0 else 1, self.groups,
                                self.conv)(x)  # fmt: skip
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


RESNET_STAGES = {8: (1, 1, 1), 14: (2, 2, 2), 20: (3, 3, 3), 32: (5, 5, 5), 18: (2, 2, 2, 2),
                 34: (3, 4, 6, 3)}  # fmt: skip


# EfficientNet-B0 (Tan & Le 2019, Table 1): (expansion, kernel, stride, channels, repeats).
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                   (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip


class _MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018) with squeeze-and-excitation (Hu et al.
    2018, ratio 0.25 of the block's input channels): 1x1 expansion, depthwise kxk, SE, 1x1
    projection; identity shortcut with stochastic depth (drop path) when shapes allow."""

    expansion: int
    kernel: int
    strides: int
    features: int
    groups: int
    conv: str
    drop_path: float

    @nn.compact
    def __call__(self, x, train: bool):
        cin, g = x.shape[-1], self.groups
        hidden = cin * self.expansion
        y = x
        if self.expansion != 1:
            y = nn.silu(_norm(g, hidden)(Conv(hidden, (1, 1), use_bias=False, impl=self.conv)(y)))
        k = (self.kernel, self.kernel)
        y = Conv(hidden, k, self.strides, groups=hidden, use_bias=False, impl=self.conv)(y)
        y = nn.silu(_norm(g, hidden)(y))
        s = nn.silu(nn.Dense(max(1, cin // 4))(y.mean(axis=(1, 2))))
        y = y * nn.sigmoid(nn.Dense(hidden)(s))[:, None, None, :]
        y = _norm(g, self.features)(Conv(self.features, (1, 1), use_bias=False, impl=self.conv)(y))
        if self.strides == 1 and cin == self.features:
            if self.drop_path > 0:
                y = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)(y)
            y = y + x
        return y


class _EfficientNet(nn.Module):
    num_classes: int
    groups: int
    conv: str
    dropout: float
    drop_path: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim == 3:
            x = x[..., None]
        x = Conv(32, (3, 3), 2, use_bias=False, impl=self.conv)(x)
        x = nn.silu(_norm(self.groups, 32)(x))
        total = sum(r for *_, r in EFFICIENTNET_B0)
        i = 0
        for expansion, kernel, stride, features, repeats in EFFICIENTNET_B0:
            for j in range(repeats):
                rate = self.drop_path * i / total  # linearly growing with depth
                x = _MBConv(expansion, kernel, stride if j == 0 else 1, features, self.groups,
                            self.conv, rate)(x, train)  # fmt: skip
                i += 1
        x = nn.silu(_norm(self.groups, 1280)(Conv(1280, (1, 1), use_bias=False,
                                                   impl=self.conv)(x)))  # fmt: skip
        x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(self.num_classes)(x)
