"""Re-initialization shared by the modules built from others."""

from torch import nn


def reset_leaves(module: nn.Module) -> None:
    """Calls ``reset_parameters`` of every leaf submodule (conv, norm, linear, FilterNorm) once.

    Only leaves: a container's own ``reset_parameters`` would reset its leaves a second time.
    """
    for submodule in module.modules():
        if next(submodule.children(), None) is None and hasattr(submodule, "reset_parameters"):
            submodule.reset_parameters()
