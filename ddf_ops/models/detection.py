"""Detection on (DDF-)ResNets: torchvision's FPN and FCOS, with DDF-Up in the FPN's top-down path.

``import ddf_ops.models.detection`` needs torchvision (``import ddf_ops`` and
``import ddf_ops.models`` never import it)::

    from ddf_ops.models.detection import fcos_resnet50_fpn

    model = fcos_resnet50_fpn(num_classes=4, backbone="ddf_resnet50", upsampler="ddf", image_size=128)

Nothing of torchvision's is copied: the backbone is :class:`ResNet` under torchvision's
``BackboneWithFPN`` (its ``IntermediateLayerGetter`` takes C3-C5), the detector is
torchvision's ``FCOS`` unchanged, and the DDF-Up FPN subclasses torchvision's
``FeaturePyramidNetwork``, keeping its lateral and output convs, its initialization and its
extra blocks; only ``forward`` is replaced, by the same top-down loop with each nearest
upsampling replaced by a :class:`NearestDDFUp`.

:class:`NearestDDFUp` is DDF-Up as a learned residual on nearest upsampling,
``nearest(x) + gate * DDFUpPack(x)``, with a per-channel ``gate`` that starts at zero (as
the last batch norm of each bottleneck does, ``zero_init_last``). So at initialization the
DDF-Up FPN computes exactly what torchvision's computes with the same weights, bit for bit
(``x + 0 * y == x`` for finite ``y``); the gate and the DDF-Up filters are learned from
there. A bare ``DDFUpPack`` cannot start at nearest upsampling: FilterNorm makes its
spatial filters zero-mean, and a copy of the centre pixel is not.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelP6P7
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("ddf_ops.models.detection needs torchvision (pip install torchvision)") from error

from ..nn import DDFUpPack
from ..nn._checks import COMBINES, check_choice
from .resnet import RESNET50_LAYERS, ResNet, ddf_resnet, resnet50

UPSAMPLERS = ("nearest", "ddf")
BACKBONES = ("resnet50", "ddf_resnet50")


class NearestDDFUp(nn.Module):
    """``nearest(x, size) + gate * DDFUpPack(x)[..., :h, :w]``, ``gate`` per channel, zero at init.

    ``size`` is the lateral map's ``(h, w)``, at most twice ``x``'s (a stride-2 conv gives
    ``ceil(h / 2)``); DDF-Up's ``2H x 2W`` output is cropped to it, which is what nearest
    upsampling to ``(h, w)`` does to its ``2H x 2W`` result too (pixel ``i`` reads ``i // 2``).

    Keyword arguments go to :class:`~ddf_ops.nn.DDFUpPack` (``kernel_size``, ``head``,
    ``combine``, ...).
    """

    def __init__(self, channels: int, **ddf_up_kwargs):
        super().__init__()
        self.ddf_up = DDFUpPack(channels, scale_factor=2, **ddf_up_kwargs)
        self.gate = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def reset_parameters(self) -> None:
        self.ddf_up.reset_parameters()
        nn.init.zeros_(self.gate)

    def forward(self, x: Tensor, size: list[int]) -> Tensor:
        nearest = F.interpolate(x, size=size, mode="nearest")
        return nearest + self.gate * self.ddf_up(x)[..., : size[0], : size[1]]


class DDFUpFeaturePyramidNetwork(FeaturePyramidNetwork):
    """torchvision's ``FeaturePyramidNetwork`` whose top-down upsamplings are :class:`NearestDDFUp`.

    Same arguments as ``FeaturePyramidNetwork``, plus ``ddf_up_kwargs`` for the DDF-Up
    modules (one per top-down step: ``upsamplers[i]`` brings level ``i + 1`` to level ``i``).
    The lateral/output convs, their initialization and the extra blocks are torchvision's;
    with every ``gate`` at zero (initialization) the output equals torchvision's FPN with the
    same weights exactly.
    """

    def __init__(
        self,
        in_channels_list: list[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer=None,
        ddf_up_kwargs: dict | None = None,
    ):
        super().__init__(in_channels_list, out_channels, extra_blocks, norm_layer)
        self.upsamplers = nn.ModuleList(
            NearestDDFUp(out_channels, **(ddf_up_kwargs or {})) for _ in range(len(in_channels_list) - 1)
        )

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        # torchvision's loop (FeaturePyramidNetwork.forward), the upsampling step swapped.
        names = list(x.keys())
        features = list(x.values())
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](features[idx])
            size = list(inner_lateral.shape[-2:])
            last_inner = inner_lateral + self.upsamplers[idx](last_inner, size)
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, features, names)
        return dict(zip(names, results))


class ResNetFPN(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` on a :class:`ResNet`: C3, C4, C5 (``layer2``-``layer4``)
    into an FPN of ``out_channels``, plus ``extra_blocks`` (default P6, P7 as in FCOS and
    RetinaNet). ``upsampler="nearest"`` is torchvision's FPN as it is; ``"ddf"`` is
    :class:`DDFUpFeaturePyramidNetwork` (``ddf_up_kwargs`` go to its DDF-Up modules).

    ``forward(images) -> {"0": P3, "1": P4, "2": P5, "p6": P6, "p7": P7}``.
    """

    def __init__(
        self,
        body: ResNet,
        upsampler: Literal["nearest", "ddf"] = "nearest",
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        ddf_up_kwargs: dict | None = None,
    ):
        check_choice("upsampler", upsampler, UPSAMPLERS)
        if extra_blocks is None:
            extra_blocks = LastLevelP6P7(out_channels, out_channels)
        return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
        in_channels_list = [info["num_chs"] for info in body.feature_info[2:]]
        super().__init__(body, return_layers, in_channels_list, out_channels, extra_blocks)
        self.upsampler = upsampler
        if upsampler == "ddf":
            # Replaces the FPN BackboneWithFPN built, keeping its weights (extra_blocks moves
            # over as it is). The new modules draw from a forked generator, so the random
            # numbers drawn after this (a detector's head) are those the nearest variant
            # draws: from one seed, both variants start with the same weights and outputs.
            nearest_fpn = self.fpn
            with torch.random.fork_rng(devices=[]):
                self.fpn = DDFUpFeaturePyramidNetwork(
                    in_channels_list, out_channels, extra_blocks, ddf_up_kwargs=ddf_up_kwargs
                )
            self.fpn.load_state_dict(nearest_fpn.state_dict(), strict=False)


def resnet_fpn(
    backbone: Literal["resnet50", "ddf_resnet50"] = "ddf_resnet50",
    upsampler: Literal["nearest", "ddf"] = "nearest",
    combine: str = "mul",
    layers: tuple[int, ...] = RESNET50_LAYERS,
    out_channels: int = 256,
    ddf_up_kwargs: dict | None = None,
) -> ResNetFPN:
    """A (DDF-)ResNet + FPN backbone for torchvision's detectors (``out_channels`` set).

    ``backbone``: ``"ddf_resnet50"`` (every bottleneck's 3x3 conv a DDFPack with ``combine``)
    or ``"resnet50"``; ``layers`` changes the depth (``(1, 1, 1, 1)`` for quick tests).
    ``upsampler``: ``"nearest"`` (torchvision's FPN) or ``"ddf"`` (:class:`NearestDDFUp`,
    whose DDFUpPack takes ``combine`` unless ``ddf_up_kwargs`` says otherwise). The ResNet
    has trainable batch norms (training from scratch: no pretrained weights are assumed).
    """
    check_choice("backbone", backbone, BACKBONES)
    check_choice("combine", combine, COMBINES)
    if backbone == "ddf_resnet50":
        body = ddf_resnet(tuple(layers), combine=combine)
    else:
        body = resnet50() if tuple(layers) == RESNET50_LAYERS else ResNet(tuple(layers))
    kwargs = {"combine": combine, **(ddf_up_kwargs or {})}
    return ResNetFPN(body, upsampler, out_channels, ddf_up_kwargs=kwargs)


def fcos_resnet50_fpn(
    num_classes: int,
    backbone: Literal["resnet50", "ddf_resnet50"] = "ddf_resnet50",
    upsampler: Literal["nearest", "ddf"] = "nearest",
    image_size: int = 800,
    combine: str = "mul",
    layers: tuple[int, ...] = RESNET50_LAYERS,
    out_channels: int = 256,
    ddf_up_kwargs: dict | None = None,
    **fcos_kwargs,
) -> FCOS:
    """torchvision's FCOS on :func:`resnet_fpn` (P3-P7, as ``fcos_resnet50_fpn`` in torchvision).

    ``num_classes`` counts the background as torchvision does (objects are labels
    ``1..num_classes-1``). ``image_size`` sets the transform's ``min_size`` and ``max_size``,
    so square images of that size are not resized. Other keyword arguments go to ``FCOS``.
    """
    fcos_kwargs.setdefault("min_size", image_size)
    fcos_kwargs.setdefault("max_size", image_size)
    body = resnet_fpn(backbone, upsampler, combine, layers, out_channels, ddf_up_kwargs)
    return FCOS(body, num_classes, **fcos_kwargs)
