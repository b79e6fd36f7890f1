"""The two filter-predicting branches of a DDF module (paper, Fig. 2).

Both are ``nn.Sequential`` with the official code's layer order, so their parameter names
(``spatial_branch.0.weight``, ``channel_branch.4.std``, ...) match the official checkpoints.
"""

from torch import Tensor, nn

from .filter_norm import FilterNorm


class SpatialBranch(nn.Sequential):
    """1x1 conv (with the DDF's stride) to ``head*k*k`` maps, then FilterNorm per head.

    Output ``(B, head*k*k, ceil(H/stride), ceil(W/stride))``: a 1x1 conv with stride s gives
    exactly the conv output size the ddf op uses, odd sizes included.
    """

    def __init__(self, in_channels: int, kernel_size: int, head: int, nonlinearity: str, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, head * kernel_size * kernel_size, 1, stride=stride),
            FilterNorm(head, kernel_size, nonlinearity),
        )


class ChannelBranch(nn.Sequential):
    """SE-style: global average pool, 1x1 conv to ``int(C*se_ratio)``, ReLU, 1x1 conv to
    ``C*k*k``, FilterNorm with a learned std; returned as the ``(B, C, k, k)`` channel filter.
    """

    def __init__(self, in_channels: int, kernel_size: int, se_ratio: float, nonlinearity: str):
        hidden = int(in_channels * se_ratio)
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, in_channels * kernel_size * kernel_size, 1),
            FilterNorm(in_channels, kernel_size, nonlinearity, running_std=True),
        )
        self.kernel_size = kernel_size

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        return super().forward(x).flatten(1).unflatten(1, (-1, k, k))

