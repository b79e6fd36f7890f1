"""ONNX export of models that use ``torch.ops.ddf.ddf``, in standard ONNX ops only.

``torch.onnx.export(..., dynamo=True)`` knows nothing of a custom op; this module gives it a
translation (an onnxscript trace-only function) that writes the op as what
:func:`ddf_ops.reference.ddf` does: one Pad, then per tap a strided Slice of the padded input
and a multiply-add with that tap's combined filter. Any k, stride, dilation, heads and both
combines; the batch and the spatial sizes may be dynamic (the shapes the graph needs are
read with ``Shape`` at run time), the channels, k and heads must be static.

    import ddf_ops.onnx
    ddf_ops.onnx.export(model, (x,), "model.onnx", dynamic_shapes=({0: "batch"},))
    # or: torch.onnx.export(model, (x,), "model.onnx", dynamo=True,
    #                       custom_translation_table=ddf_ops.onnx.translation_table())

onnx and onnxscript are imported only when these functions run, so ``import ddf_ops`` does
not need them. The translation is written in opset-18 ops (torchlib's); the exporter converts the
model to its target opset (20 by default in torch 2.14). Only the forward op is translated.

Example:
    With ``torch.onnx.export`` and the translation table; the graph holds standard ops only:

    >>> import torch
    >>> import ddf_ops.onnx
    >>> class Filter(torch.nn.Module):
    ...     def forward(self, x, channel_filter, spatial_filter):
    ...         return ddf_ops.ddf(x, channel_filter, spatial_filter, dilation=2)
    >>> model = Filter().eval()
    >>> args = (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 3, 3), torch.randn(1, 9, 6, 6))
    >>> program = torch.onnx.export(
    ...     model, args, dynamo=True, custom_translation_table=ddf_ops.onnx.translation_table(), verbose=False
    ... )
    >>> {node.domain for node in program.model.graph}  # "": the standard ONNX domain
    {''}
    >>> torch.allclose(program(*args)[0], model(*args), atol=1e-5)  # run by onnxruntime
    True
"""

from collections.abc import Callable
from typing import Any

import torch


def _translate_ddf(input, channel_filter, spatial_filter, stride: int = 1, dilation: int = 1, combine: str = "mul"):
    """``ddf::ddf`` in ONNX (opset-18 ops), traced by the exporter with symbolic inputs.

    With ``X`` the input padded by ``p = d*(k-1)//2`` and viewed as ``(B, G, C/G, Hp, Wp)``, the
    channel filter split into taps ``cf_t`` of ``(B, G, C/G, 1, 1)`` and the spatial filter into
    taps ``sf_t`` of ``(B, G, 1, Ho, Wo)``, tap ``t = i*k + j``:

        out = sum_t X[..., i*d : i*d + (Ho-1)*s + 1 : s, j*d : j*d + (Wo-1)*s + 1 : s] * F(cf_t, sf_t)

    (rows sliced once per i, columns per tap), reshaped to ``(B, C, Ho, Wo)``.
    """
    from onnxscript import opset18 as op

    if combine not in ("mul", "add"):
        raise ValueError(f'combine must be "mul" or "add", got {combine!r}')
    C = input.shape[1]
    k = channel_filter.shape[3]
    taps = spatial_filter.shape[1]
    if not all(isinstance(n, int) for n in (C, k, taps)):
        raise ValueError(
            "ONNX export of ddf needs static channels, kernel size and heads; got input channels "
            f"{C}, kernel size {k}, spatial-filter channels {taps}"
        )
    kk = k * k
    G = taps // kk
    pad = (k - 1) // 2 * dilation

    constants = {}

    def ints(*values):  # an int64 constant, one node per distinct value
        if values not in constants:
            constants[values] = op.Constant(value_ints=list(values))
        return constants[values]

    batch = op.Shape(input, start=0, end=1)  # [B]
    out_size = op.Shape(spatial_filter, start=2, end=4)  # [Ho, Wo]
    padded = op.Pad(input, ints(0, 0, pad, pad, 0, 0, pad, pad))
    padded_size = op.Shape(padded, start=2, end=4)  # [Hp, Wp]
    x = op.Reshape(padded, op.Concat(batch, ints(G, C // G), padded_size, axis=0))
    # One piece per tap: cf (B, G, C/G, 1, 1) and sf (B, G, 1, Ho, Wo), broadcasting to the taps.
    cf = op.Split(op.Reshape(channel_filter, ints(0, G, C // G, kk, 1)), axis=3, num_outputs=kk)
    sf = op.Split(op.Reshape(spatial_filter, op.Concat(batch, ints(G, kk), out_size, axis=0)), axis=2, num_outputs=kk)
    if kk == 1:  # Split with one output returns a value, not a sequence
        cf, sf = [cf], [sf]
    # Row (column) offset o reads o, o + s, ..., o + (Ho-1)*s: end = (Ho-1)*s + o + 1 <= Hp.
    last = op.Mul(op.Sub(out_size, ints(1, 1)), ints(stride, stride))  # [(Ho-1)*s, (Wo-1)*s]
    last_row, last_col = op.Slice(last, ints(0), ints(1)), op.Slice(last, ints(1), ints(2))
    col_ends = [op.Add(last_col, ints(j * dilation + 1)) for j in range(k)]
    step, out = ints(stride), None
    for i in range(k):
        o = i * dilation
        rows = op.Slice(x, ints(o), op.Add(last_row, ints(o + 1)), ints(3), step)  # (B, G, C/G, Ho, Wp)
        for j in range(k):
            tap = op.Slice(rows, ints(j * dilation), col_ends[j], ints(4), step)  # (B, G, C/G, Ho, Wo)
            t = i * k + j
            weight = op.Mul(cf[t], sf[t]) if combine == "mul" else op.Add(cf[t], sf[t])
            term = op.Mul(tap, weight)
            out = term if out is None else op.Add(out, term)
    return op.Reshape(out, op.Concat(batch, ints(C), out_size, axis=0))


def translation_table() -> dict[Callable, Callable]:
    """``{torch.ops.ddf.ddf.default: translation}`` for ``torch.onnx.export(custom_translation_table=...)``.

    Example:
        >>> import torch
        >>> import ddf_ops.onnx
        >>> list(ddf_ops.onnx.translation_table()) == [torch.ops.ddf.ddf.default]
        True
    """
    return {torch.ops.ddf.ddf.default: _translate_ddf}


def export(model: torch.nn.Module, args: tuple, f: Any = None, **kwargs) -> Any:
    """``torch.onnx.export(model, args, f, dynamo=True, **kwargs)`` with ddf's translation added to
    any ``custom_translation_table`` given. Returns the ``ONNXProgram``; pass ``dynamic_shapes``
    (e.g. ``({0: "batch"},)``) for a dynamic batch, as with ``torch.onnx.export``.

    Example:
        A DDFPack with a dynamic batch (``f=None``: nothing is written; ``verbose=False``:
        no progress messages), then run by onnxruntime on another batch size:

        >>> import torch
        >>> import ddf_ops.onnx
        >>> from ddf_ops.nn import DDFPack
        >>> model = DDFPack(8, stride=2).eval()
        >>> program = ddf_ops.onnx.export(
        ...     model, (torch.randn(2, 8, 7, 7),), dynamic_shapes=({0: "batch"},), verbose=False
        ... )
        >>> x = torch.randn(3, 8, 7, 7)
        >>> (out,) = program(x)
        >>> out.shape
        torch.Size([3, 8, 4, 4])
        >>> torch.allclose(out, model(x), atol=1e-5)
        True
    """
    if kwargs.pop("dynamo", True) is not True:
        raise ValueError("ddf_ops.onnx.export uses the dynamo exporter (dynamo=True) only")
    table = {**translation_table(), **(kwargs.pop("custom_translation_table", None) or {})}
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
