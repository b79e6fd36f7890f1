"""FilterNorm: the filter normalization of the DDF paper (section 3.3)."""

import torch
from torch import Tensor, nn

from ._checks import check_int, check_odd, filter_gain

# Added to the std so a constant filter (std 0) normalizes to zeros instead of NaNs.
_EPS = 1e-10


class FilterNorm(nn.Module):
    r"""Normalizes each predicted k x k filter to zero mean and unit std, then rescales it.

    The input holds ``num_filters`` filters of ``k*k`` taps at every position:
    ``(B, num_filters*k*k, H, W)``, tap ``t`` of filter ``f`` in channel ``f*k*k + t``. That
    covers both DDF branches:

    - spatial filters: ``num_filters`` = heads, one filter per head per pixel;
    - channel filters: ``num_filters`` = channels, with ``H = W = 1``.

    Each filter is normalized over its own k*k taps (std with Bessel's correction, as in the
    official code), then multiplied by ``calculate_gain(nonlinearity) / k``: the std a
    He/Xavier-initialized k x k conv weight would have, so a DDF starts at the scale of the
    conv it replaces. With ``running_std=True`` that scale is instead a learned parameter of
    shape ``(num_filters*k*k,)`` (one value per tap of each filter), initialized from
    ``N(0, gain/k)`` like the official code.

    Args:
        num_filters: filters per position (heads or channels).
        kernel_size: k, odd, >= 3 (a single tap always normalizes to zero).
        nonlinearity: a name ``torch.nn.init.calculate_gain`` knows.
        running_std: learn the scale instead of using the fixed gain.

    Example:
        Two 3x3 filters per pixel come out with zero mean and std ``gain = 1/3`` (linear):

        >>> import torch
        >>> from ddf_ops.nn import FilterNorm
        >>> norm = FilterNorm(num_filters=2, kernel_size=3)
        >>> taps = norm(torch.randn(4, 2 * 3 * 3, 5, 5)).unflatten(1, (2, 3 * 3))
        >>> torch.allclose(taps.mean(dim=2), torch.zeros(()), atol=1e-6)
        True
        >>> torch.allclose(taps.std(dim=2), torch.full((), 1 / 3))
        True
        >>> FilterNorm(2, 3, running_std=True).std.shape  # one learned scale per tap
        torch.Size([18])
    """

    def __init__(self, num_filters: int, kernel_size: int, nonlinearity: str = "linear", running_std: bool = False):
        super().__init__()
        check_int("num_filters", num_filters)
        check_odd("kernel_size", kernel_size, minimum=3)
        self.num_filters = num_filters
        self.kernel_size = kernel_size
        self.nonlinearity = nonlinearity
        self.gain = filter_gain(nonlinearity, kernel_size)
        self.std: nn.Parameter | None
        if running_std:
            self.std = nn.Parameter(torch.empty(num_filters * kernel_size * kernel_size))
        else:
            self.register_parameter("std", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.std is not None:
            nn.init.normal_(self.std, mean=0.0, std=self.gain)

    def forward(self, filters: Tensor) -> Tensor:
        taps = filters.unflatten(1, (self.num_filters, self.kernel_size * self.kernel_size))
        std, mean = torch.std_mean(taps, dim=2, keepdim=True)
        normalized = ((taps - mean) / (std + _EPS)).flatten(1, 2)
        if self.std is None:
            return normalized * self.gain
        return normalized * self.std[:, None, None]

    def extra_repr(self) -> str:
        return (
            f"{self.num_filters}, kernel_size={self.kernel_size}, nonlinearity={self.nonlinearity!r}, "
            f"running_std={self.std is not None}"
        )
