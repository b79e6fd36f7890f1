"""DDFPack: the DDF module, a drop-in replacement for a depth-preserving k x k conv."""

from torch import Tensor, nn

from ..functional import ddf
from ._branches import ChannelBranch, SpatialBranch
from ._checks import check_filter_args, check_int
from ._reset import reset_leaves


class DDFPack(nn.Module):
    r"""Decoupled dynamic filter module (Zhou et al., CVPR 2021, Fig. 2).

    Predicts from ``x`` a spatial filter per pixel (and head) and a channel filter per
    channel, and applies them with :func:`ddf_ops.ddf`:

    - spatial branch: 1x1 conv with this module's stride to ``head*k*k`` maps + FilterNorm
      (fixed gain);
    - channel branch: global average pool -> 1x1 conv to ``int(in_channels*se_ratio)`` ->
      ReLU -> 1x1 conv to ``in_channels*k*k`` -> FilterNorm (learned std).

    Heads are native to the op (channel ``c`` uses head ``c // (in_channels // head)``), so,
    unlike the official code, nothing is reshaped into ``batch*head``.

    Shapes: ``(B, C, H, W) -> (B, C, ceil(H/stride), ceil(W/stride))``, the size of
    ``nn.Conv2d(C, C, k, stride, padding=dilation*(k-1)//2)``; odd sizes work with any stride.

    Args:
        in_channels: C (also the output channels).
        kernel_size: k, odd, >= 3.
        stride: s >= 1.
        dilation: d >= 1.
        head: spatial-filter heads G; must divide ``in_channels``.
        se_ratio: hidden width of the channel branch, as a fraction of ``in_channels``.
        nonlinearity: what follows the module, for FilterNorm's gain
            (``torch.nn.init.calculate_gain`` name).
        combine: how the two filters combine per tap: ``"mul"`` or ``"add"``.

    Example:
        The output has the size of the conv it replaces, here with stride 2 and 2 heads:

        >>> import torch
        >>> from ddf_ops.nn import DDFPack
        >>> ddf = DDFPack(16, kernel_size=3, stride=2, head=2)
        >>> x = torch.randn(2, 16, 9, 9)
        >>> ddf(x).shape
        torch.Size([2, 16, 5, 5])
        >>> torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)(x).shape
        torch.Size([2, 16, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        head: int = 1,
        se_ratio: float = 0.2,
        nonlinearity: str = "relu",
        combine: str = "mul",
    ):
        super().__init__()
        check_filter_args(in_channels, kernel_size, dilation, head, se_ratio, nonlinearity, combine)
        check_int("stride", stride)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.head = head
        self.se_ratio = se_ratio
        self.nonlinearity = nonlinearity
        self.combine = combine
        self.spatial_branch = SpatialBranch(in_channels, kernel_size, head, nonlinearity, stride)
        self.channel_branch = ChannelBranch(in_channels, kernel_size, se_ratio, nonlinearity)

    def reset_parameters(self) -> None:
        reset_leaves(self)

    def forward(self, x: Tensor) -> Tensor:
        return ddf(x, self.channel_branch(x), self.spatial_branch(x), self.stride, self.dilation, self.combine)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"dilation={self.dilation}, head={self.head}, se_ratio={self.se_ratio}, "
            f"nonlinearity={self.nonlinearity!r}, combine={self.combine!r}"
        )
