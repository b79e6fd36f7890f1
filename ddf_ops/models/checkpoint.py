"""Loading the official DDF-ResNet checkpoints (and timm training checkpoints) into our models.

The official models are timm ResNets with DDF bottlenecks; their state_dict keys are exactly
those of :mod:`ddf_ops.models` (the same module names, DDFPack's included), so a checkpoint
loads as it is. Two things need care:

- timm's training script saves a dict with ``state_dict`` (the trained weights), optionally
  ``state_dict_ema`` (the exponential moving average of them), ``args`` (the command line, an
  ``argparse.Namespace``, whose ``model`` names the architecture) and more; weights saved from a
  ``DistributedDataParallel`` model carry a ``module.`` prefix.
- "mul" and "add" models have the same keys and shapes, so loading one into the other
  succeeds silently and computes the wrong thing. Where the checkpoint records its model, a
  combine that differs from the model's is warned about.
"""

import argparse
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import DDFPack

# Which weights a timm checkpoint's entries hold, in order of preference (use_ema=True).
EMA_KEY, WEIGHTS_KEY = "state_dict_ema", "state_dict"
_MODULE_PREFIX = "module."
_COMBINE_IN_NAME = re.compile(r"ddf_(mul|add)_")
_LISTED = 8  # keys named per kind of mismatch in the error message


def _read(path: str | os.PathLike, map_location) -> Any:
    # weights_only: a checkpoint is data; timm's training checkpoints also hold an
    # argparse.Namespace (their ``args``), which is allowed as timm itself does.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location=map_location, weights_only=True)


def _recorded_model_name(checkpoint: Mapping) -> str | None:
    args = checkpoint.get("args")
    name = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    return name if isinstance(name, str) else None


def _select_weights(checkpoint: Mapping, use_ema: bool) -> tuple[Mapping, str]:
    """The state_dict inside ``checkpoint`` and a description of where it came from."""
    keys = [EMA_KEY, WEIGHTS_KEY] if use_ema else [WEIGHTS_KEY]
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key], f"the checkpoint's {key!r}"
    if EMA_KEY in checkpoint or WEIGHTS_KEY in checkpoint:
        raise ValueError(
            f"the checkpoint has no {' or '.join(map(repr, keys))} entry (it has {sorted(map(str, checkpoint))}); "
            f"pass use_ema=True to load {EMA_KEY!r}"
        )
    return checkpoint, "the checkpoint"


def _strip_prefix(state_dict: Mapping) -> dict:
    return {(k[len(_MODULE_PREFIX) :] if k.startswith(_MODULE_PREFIX) else k): v for k, v in state_dict.items()}


def _model_combine(model: nn.Module) -> str | None:
    combines = {m.combine for m in model.modules() if isinstance(m, DDFPack)}
    return combines.pop() if len(combines) == 1 else None


def _check_keys(model: nn.Module, state_dict: Mapping, source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    for what, items in (("missing from", missing), ("unexpected in", unexpected), ("with other shapes in", shapes)):
        if items:
            listed = ", ".join(items[:_LISTED]) + (f", ... ({len(items)} in all)" if len(items) > _LISTED else "")
            problems.append(f"{len(items)} key{'s' if len(items) > 1 else ''} {what} {source}: {listed}")
    if problems:
        raise RuntimeError(
            f"the checkpoint does not fit {type(model).__name__} (is it the same architecture, depth, "
            "and num_classes?):\n  " + "\n  ".join(problems)
        )


def load_official_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Loads an official DDF-ResNet checkpoint, strictly, into ``model`` and returns it.

    Args:
        model: e.g. ``ddf_resnet50(combine="mul")``.
        checkpoint: a path (read with ``torch.load(weights_only=True)``) or what it holds:
            a raw ``state_dict``, or a timm training checkpoint (a dict with ``state_dict``
            and/or ``state_dict_ema``). A leading ``module.`` (DistributedDataParallel) is
            stripped from every key.
        use_ema: when the checkpoint has both, load ``state_dict_ema`` (the default) rather
            than ``state_dict``. The EMA weights win because they are the ones a timm run that
            keeps an EMA evaluates, reports and selects its best checkpoint by, and what
            timm's own ``load_state_dict`` loads by default. A checkpoint with only
            ``state_dict`` (the official recipe keeps no EMA) loads that.
        map_location: where the tensors of a path are loaded.

    Warns:
        UserWarning: when the checkpoint names its model (timm's ``args.model``, e.g.
            ``"ddf_add_resnet50"``) and that model's combine differs from ``model``'s: mul and
            add checkpoints have identical keys, so they would otherwise load silently.

    Raises:
        RuntimeError: keys missing, unexpected or of another shape (listed in the message).
        TypeError: ``checkpoint`` is neither a path nor a mapping.

    Example:
        A timm training checkpoint of a DistributedDataParallel model (``module.`` keys):

        >>> import torch
        >>> from ddf_ops.models import ddf_resnet, load_official_checkpoint
        >>> trained = ddf_resnet((1, 1, 1, 1), num_classes=10)
        >>> checkpoint = {"state_dict": {"module." + k: v for k, v in trained.state_dict().items()}}
        >>> model = load_official_checkpoint(ddf_resnet((1, 1, 1, 1), num_classes=10), checkpoint)
        >>> all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
        True
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = _read(checkpoint, map_location)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path, a state_dict or a timm checkpoint dict, got {type(checkpoint)}")
    state_dict, source = _select_weights(checkpoint, use_ema)
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise TypeError(
            f"{source} is not a state_dict: {not_tensors[:_LISTED]} are not tensors (a timm checkpoint "
            f"keeps its weights under {WEIGHTS_KEY!r} or {EMA_KEY!r})"
        )
    recorded = _recorded_model_name(checkpoint)
    match = _COMBINE_IN_NAME.match(recorded) if recorded else None
    combine = _model_combine(model)
    if match and combine and match.group(1) != combine:
        warnings.warn(
            f"the checkpoint was trained as {recorded!r} (combine={match.group(1)!r}) but the model uses "
            f"combine={combine!r}; mul and add checkpoints have the same keys, so it loads, but the model "
            f"will not compute what was trained. Build the model with combine={match.group(1)!r}.",
            stacklevel=2,
        )
    state_dict = _strip_prefix(state_dict)
    _check_keys(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model
