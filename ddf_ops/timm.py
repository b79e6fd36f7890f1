"""The DDF-ResNets in timm's model registry, under the official code's names.

``import ddf_ops.timm`` registers ``ddf_mul_resnet50``, ``ddf_add_resnet50``,
``ddf_mul_resnet101`` and ``ddf_add_resnet101``, so that ``timm.create_model`` and timm's
scripts (``train.py --model ddf_mul_resnet50``) build :mod:`ddf_ops.models` DDF-ResNets::

    import timm
    import ddf_ops.timm  # noqa: F401  (registers the models)

    model = timm.create_model("ddf_mul_resnet50", num_classes=10)
    backbone = timm.create_model("ddf_add_resnet50", features_only=True, out_indices=(1, 2, 3, 4))

The models are built by timm's ``build_model_with_cfg``, so timm's keyword arguments work:
``pretrained``, ``pretrained_cfg_overlay``, ``features_only``, ``out_indices``,
``feature_cls``; the others (``num_classes``, ``zero_init_last``) go to
:func:`ddf_ops.models.ddf_resnet`. The pretrained configs (bicubic, crop 0.875, ImageNet
mean/std) are the official ones; no weights are hosted, so ``pretrained=True`` needs a local
file, ``pretrained_cfg_overlay=dict(file=path)``, which timm loads (preferring
``state_dict_ema``, stripping ``module.``). :func:`ddf_ops.models.load_official_checkpoint`
does the same and also checks that the checkpoint's combine matches the model's.

timm stays optional: ``import ddf_ops`` never imports timm or this module.

Example:
    >>> import timm
    >>> import ddf_ops.timm  # noqa: F401  (registers the models)
    >>> timm.list_models("ddf_*")
    ['ddf_add_resnet50', 'ddf_add_resnet101', 'ddf_mul_resnet50', 'ddf_mul_resnet101']
"""

from functools import partial

try:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("ddf_ops.timm needs timm (pip install timm); the rest of ddf_ops does not") from error

from .models.resnet import RESNET50_LAYERS, RESNET101_LAYERS, ResNet, ddf_resnet

__all__ = []  # timm's register_model appends the model names

MODELS = {
    "ddf_mul_resnet50": (RESNET50_LAYERS, "mul"),
    "ddf_add_resnet50": (RESNET50_LAYERS, "add"),
    "ddf_mul_resnet101": (RESNET101_LAYERS, "mul"),
    "ddf_add_resnet101": (RESNET101_LAYERS, "add"),
}


def _cfg() -> dict:
    """The official code's pretrained config (timm's ResNet config with bicubic resizing)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODELS})


def _build(layers: tuple[int, ...], combine: str, in_chans: int = 3, **kwargs) -> ResNet:
    if in_chans != 3:
        raise ValueError(f"the DDF-ResNets take 3-channel images, got in_chans={in_chans}")
    return ddf_resnet(layers, combine, **kwargs)


def _create(variant: str, pretrained: bool, **kwargs) -> ResNet:
    layers, combine = MODELS[variant]
    return build_model_with_cfg(partial(_build, layers, combine), variant, pretrained, **kwargs)


@register_model
def ddf_mul_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """DDF-ResNet-50, combine "mul" (:func:`ddf_ops.models.ddf_resnet50`).

    Example:
        >>> import timm
        >>> import ddf_ops.timm  # noqa: F401  (registers the models)
        >>> from ddf_ops.models import count_parameters
        >>> from ddf_ops.nn import DDFPack
        >>> model = timm.create_model("ddf_mul_resnet50", num_classes=10)
        >>> {m.combine for m in model.modules() if isinstance(m, DDFPack)}
        {'mul'}
        >>> count_parameters(model)
        14815238
    """
    return _create("ddf_mul_resnet50", pretrained, **kwargs)


@register_model
def ddf_add_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """DDF-ResNet-50, combine "add" (:func:`ddf_ops.models.ddf_resnet50`).

    Example:
        >>> import timm
        >>> import ddf_ops.timm  # noqa: F401  (registers the models)
        >>> from ddf_ops.models import count_parameters
        >>> from ddf_ops.nn import DDFPack
        >>> model = timm.create_model("ddf_add_resnet50", num_classes=10)
        >>> {m.combine for m in model.modules() if isinstance(m, DDFPack)}
        {'add'}
        >>> count_parameters(model)
        14815238
    """
    return _create("ddf_add_resnet50", pretrained, **kwargs)


@register_model
def ddf_mul_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """DDF-ResNet-101, combine "mul" (:func:`ddf_ops.models.ddf_resnet101`).

    Example:
        >>> import timm
        >>> import ddf_ops.timm  # noqa: F401  (registers the models)
        >>> from ddf_ops.models import count_parameters
        >>> from ddf_ops.nn import DDFPack
        >>> model = timm.create_model("ddf_mul_resnet101", num_classes=10)
        >>> {m.combine for m in model.modules() if isinstance(m, DDFPack)}
        {'mul'}
        >>> count_parameters(model)
        26118402
    """
    return _create("ddf_mul_resnet101", pretrained, **kwargs)


@register_model
def ddf_add_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """DDF-ResNet-101, combine "add" (:func:`ddf_ops.models.ddf_resnet101`).

    Example:
        >>> import timm
        >>> import ddf_ops.timm  # noqa: F401  (registers the models)
        >>> from ddf_ops.models import count_parameters
        >>> from ddf_ops.nn import DDFPack
        >>> model = timm.create_model("ddf_add_resnet101", num_classes=10)
        >>> {m.combine for m in model.modules() if isinstance(m, DDFPack)}
        {'add'}
        >>> count_parameters(model)
        26118402
    """
    return _create("ddf_add_resnet101", pretrained, **kwargs)
