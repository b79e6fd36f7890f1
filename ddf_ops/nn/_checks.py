"""Constructor-argument checks shared by the DDF modules.

Each check raises a ``ValueError`` that names the argument and the value it got, so a bad
configuration fails where the module is built rather than deep inside the op.
"""

from torch.nn.init import calculate_gain

# The names torch.nn.init.calculate_gain knows (it takes no parameter for these).
NONLINEARITIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
)  # fmt: skip
COMBINES = ("mul", "add")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = 1) -> None:
    if not _is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")


def check_odd(name: str, value: object, minimum: int = 1) -> None:
    if not _is_int(value) or value < minimum or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def filter_gain(nonlinearity: str, kernel_size: int) -> float:
    """The std FilterNorm gives a filter: the nonlinearity's gain divided by k."""
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    return calculate_gain(nonlinearity) / kernel_size


def check_filter_args(
    in_channels: object,
    kernel_size: object,
    dilation: object,
    head: object,
    se_ratio: object,
    nonlinearity: object,
    combine: object,
) -> None:
    """The arguments DDFPack and DDFUpPack share."""
    check_int("in_channels", in_channels)
    # A 1-tap filter normalizes to all zeros, so FilterNorm (and the official code) needs k > 1.
    check_odd("kernel_size", kernel_size, minimum=3)
    check_int("dilation", dilation)
    check_int("head", head)
    if in_channels % head != 0:
        raise ValueError(f"head must divide in_channels={in_channels}, got head={head}")
    if not isinstance(se_ratio, (int, float)) or isinstance(se_ratio, bool) or int(in_channels * se_ratio) < 1:
        raise ValueError(
            f"se_ratio must give the channel branch at least one hidden channel, i.e. "
            f"int(in_channels * se_ratio) >= 1 with in_channels={in_channels}, got se_ratio={se_ratio!r}"
        )
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    check_choice("combine", combine, COMBINES)
