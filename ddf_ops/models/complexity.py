"""Parameter and FLOP counts of a model, the numbers of the paper's tables."""

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import flops as _flops  # noqa: F401  (registers the ddf FLOP formulas)


def count_parameters(model: nn.Module) -> int:
    """The number of parameters of ``model`` (every element of every parameter, trainable or not).

    Example:
        >>> import torch
        >>> from ddf_ops.models import count_parameters
        >>> count_parameters(torch.nn.Linear(3, 2))  # 3*2 weights + 2 biases
        8
    """
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops(build: Callable[[], nn.Module], image_size: int = 224, batch_size: int = 1) -> int:
    """FLOPs (``FlopCounterMode``: 2 per multiply-accumulate) of one inference forward.

    The model is built and run on the meta device: only shapes are computed, so even
    ResNet-101 at 224x224 takes a fraction of a second and no memory.

    Example:
        >>> from functools import partial
        >>> from ddf_ops.models import count_flops, ddf_resnet50, resnet50
        >>> count_flops(resnet50)
        8178368512
        >>> count_flops(partial(ddf_resnet50, combine="add"), batch_size=2)
        9092174848
    """
    with torch.device("meta"):
        model = build().eval()
        images = torch.empty(batch_size, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()
