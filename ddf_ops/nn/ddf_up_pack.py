"""DDFUpPack: DDF-Up, content-adaptive upsampling with scale_factor**2 DDF branches."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import ddf
from ._branches import ChannelBranch, SpatialBranch
from ._checks import check_filter_args, check_int, check_odd
from ._reset import reset_leaves


class DDFUpPack(nn.Module):
    r"""DDF-Up (Zhou et al., CVPR 2021, section 4.3): upsampling by ``scale_factor``.

    ``scale_factor**2`` DDF branches, each with its own spatial and channel branch, filter the
    low-resolution ``x`` (stride 1); branch ``i*scale_factor + j`` gives the output pixels at
    offset ``(i, j)`` of each ``scale_factor x scale_factor`` cell (the outputs are stacked and
    pixel-shuffled). Shapes: ``(B, C, H, W) -> (B, C, scale_factor*H, scale_factor*W)``.

    Spatial branches, as in the official code:

    - without guidance (``joint_channels < 1``): a depth-wise ``dw_kernel_size`` conv on
      ``x`` (for context around each low-resolution pixel), then 1x1 conv + FilterNorm;
    - with guidance (``joint_channels >= 1``): 1x1 conv + FilterNorm on ``joint_x``, a
      ``(B, joint_channels, H, W)`` guidance feature at the low resolution.

    The channel branches always read ``x``.

    Fixed official bugs: the official forward passes ``head`` where ``combine`` belongs (so
    it cannot run); its guided spatial branch is built on ``in_channels`` instead of
    ``joint_channels`` (so guidance with another channel count fails); its depth-wise conv
    pads by ``kernel_size//2`` instead of ``dw_kernel_size//2`` (wrong sizes whenever they
    differ). It also raises ``dw_kernel_size`` to at least 3 silently; here any odd size is
    used as given.

    Args:
        in_channels: C of ``x`` (and of the output).
        kernel_size: k of the dynamic filters, odd, >= 3.
        scale_factor: upsampling factor, >= 1.
        dilation: d >= 1.
        head: spatial-filter heads; must divide ``in_channels``.
        se_ratio: hidden width of the channel branches, as a fraction of ``in_channels``.
        nonlinearity: for FilterNorm's gain (``"linear"``: upsampled features are not
            usually followed by a ReLU).
        dw_kernel_size: depth-wise conv size of the unguided spatial branches, odd.
        joint_channels: channels of the guidance ``joint_x``; < 1 means no guidance.
        combine: ``"mul"`` or ``"add"``.

    Example:
        Unguided, then guided by a 4-channel feature at the low resolution:

        >>> import torch
        >>> from ddf_ops.nn import DDFUpPack
        >>> x = torch.randn(1, 8, 5, 7)
        >>> DDFUpPack(8, scale_factor=2)(x).shape
        torch.Size([1, 8, 10, 14])
        >>> guided = DDFUpPack(8, scale_factor=3, joint_channels=4)
        >>> guided(x, torch.randn(1, 4, 5, 7)).shape
        torch.Size([1, 8, 15, 21])
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int = 3,
        scale_factor: int = 2,
        dilation: int = 1,
        head: int = 1,
        se_ratio: float = 0.2,
        nonlinearity: str = "linear",
        dw_kernel_size: int = 3,
        joint_channels: int = -1,
        combine: str = "mul",
    ):
        super().__init__()
        check_filter_args(in_channels, kernel_size, dilation, head, se_ratio, nonlinearity, combine)
        check_int("scale_factor", scale_factor)
        check_odd("dw_kernel_size", dw_kernel_size)
        check_int("joint_channels", joint_channels, minimum=None)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.scale_factor = scale_factor
        self.dilation = dilation
        self.head = head
        self.se_ratio = se_ratio
        self.nonlinearity = nonlinearity
        self.dw_kernel_size = dw_kernel_size
        self.joint_channels = joint_channels
        self.combine = combine
        self.guided = joint_channels >= 1

        self.spatial_branch = nn.ModuleList()
        self.channel_branch = nn.ModuleList()
        for _ in range(scale_factor * scale_factor):
            if self.guided:
                spatial = SpatialBranch(joint_channels, kernel_size, head, nonlinearity)
            else:
                spatial = nn.Sequential(
                    nn.Conv2d(
                        in_channels, in_channels, dw_kernel_size, padding=dw_kernel_size // 2, groups=in_channels
                    ),
                    SpatialBranch(in_channels, kernel_size, head, nonlinearity),
                )
            self.spatial_branch.append(spatial)
            self.channel_branch.append(ChannelBranch(in_channels, kernel_size, se_ratio, nonlinearity))

    def reset_parameters(self) -> None:
        reset_leaves(self)

    def forward(self, x: Tensor, joint_x: Tensor | None = None) -> Tensor:
        if self.guided and joint_x is None:
            raise ValueError(f"DDFUpPack was built with joint_channels={self.joint_channels}: forward needs joint_x")
        if not self.guided and joint_x is not None:
            raise ValueError("DDFUpPack was built without guidance (joint_channels < 1): joint_x must be None")
        guide = joint_x if self.guided else x
        outs = [
            ddf(x, channel(x), spatial(guide), 1, self.dilation, self.combine)
            for spatial, channel in zip(self.spatial_branch, self.channel_branch)
        ]
        # (B, C, s*s, H, W) -> (B, C*s*s, H, W): pixel_shuffle sends channel c*s*s + i*s + j,
        # i.e. branch i*s + j, to the output pixel (s*y + i, s*x + j).
        return F.pixel_shuffle(torch.stack(outs, dim=2).flatten(1, 2), self.scale_factor)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, kernel_size={self.kernel_size}, scale_factor={self.scale_factor}, "
            f"dilation={self.dilation}, head={self.head}, se_ratio={self.se_ratio}, "
            f"nonlinearity={self.nonlinearity!r}, dw_kernel_size={self.dw_kernel_size}, "
            f"joint_channels={self.joint_channels}, combine={self.combine!r}"
        )
