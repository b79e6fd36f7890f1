"""torch.hub entry points: DDF-ResNet-50/101 built by ddf_ops.models.

    model = torch.hub.load("path/to/ddf_ops", "ddf_resnet50", source="local")
    model = torch.hub.load("path/to/ddf_ops", "ddf_resnet50", source="local",
                           checkpoint="ddf_mul_resnet50.pth")

The repository must be built (`make build`, or `pip install --no-build-isolation .`): hub
imports this file from the checkout, and ddf_ops from there, compiled library included.
No weights are downloaded: the official DDF checkpoints are not published at a stable URL,
so `checkpoint` is a file you have (or a state_dict), loaded strictly by
ddf_ops.models.load_official_checkpoint (EMA weights when the file has both; a combine that
disagrees with the file's recorded model name warns).
"""

dependencies = ["torch"]

from ddf_ops.models import ddf_resnet50 as _ddf_resnet50  # noqa: E402
from ddf_ops.models import ddf_resnet101 as _ddf_resnet101  # noqa: E402
from ddf_ops.models import load_official_checkpoint as _load_official_checkpoint  # noqa: E402


def _build(factory, combine, checkpoint, use_ema, **kwargs):
    model = factory(combine=combine, **kwargs)
    if checkpoint is not None:
        _load_official_checkpoint(model, checkpoint, use_ema=use_ema)
    return model


def ddf_resnet50(combine="mul", checkpoint=None, use_ema=True, **kwargs):
    """DDF-ResNet-50 (combine "mul" or "add"); `checkpoint`: an official checkpoint's path or
    state_dict, loaded with ddf_ops.models.load_official_checkpoint; other keyword arguments go
    to ddf_ops.models.ddf_resnet50 (num_classes, zero_init_last, ...)."""
    return _build(_ddf_resnet50, combine, checkpoint, use_ema, **kwargs)


def ddf_resnet101(combine="mul", checkpoint=None, use_ema=True, **kwargs):
    """DDF-ResNet-101; arguments as ddf_resnet50's."""
    return _build(_ddf_resnet101, combine, checkpoint, use_ema, **kwargs)
