"""torch.func transforms and forward-mode AD for the ddf ops (registered by ``import ddf_ops``).

The compiled library's autograd kernel is a C++ ``torch::autograd::Function``, which PyTorch
cannot combine with functorch transforms (torch.func.grad, vjp, jacrev, jvp, jacfwd, hessian,
vmap) or with forward-mode AD. Python ``torch.autograd.Function`` can: a ``setup_context``
staticmethod makes it work with the grad transforms, ``jvp`` with forward-mode AD, and ``vmap``
gives it a batching rule. So importing ``ddf_ops`` registers, for both ``ddf::ddf`` and
``ddf::ddf_backward``:

- ``Autograd``: the Python Function below in place of the C++ one, so eager autograd, double
  backward, ``torch.autograd.forward_ad``, torch.compile and torch.export use it. A process
  that only runs ``torch.ops.load_library`` keeps the C++ kernel (and so has no forward-mode
  AD); both call the same derivative ops (below).
- ``FuncTorchDynamicLayerFrontMode``: the key the dispatcher reaches first while a functorch
  transform is active. The kernel hands the call to the Python Function, which routes it through
  functorch's ``custom_function_call``, exactly as if the Function had been called directly.
  (``torch.library.register_autograd`` and ``register_vmap`` do not help here: the former only
  registers an Autograd kernel, which functorch's grad transforms do not accept from a custom
  op, the latter only vmap.)

The batching rule folds the vmapped dimension into the op's batch dimension B: one op call per
vmap level, whatever the vmapped size; unbatched arguments are expanded.

The Functions hold no derivative algebra: their backward and jvp call the library's private
ops ``ddf::_ddf_backward_backward``, ``_ddf_jvp`` and ``_ddf_backward_jvp``, where the formulas
are written once (``csrc/autograd/ddf_derivatives.cpp``, shared with the C++ autograd). Those
ops are CompositeImplicitAutograd: sums of ddf and ddf_backward calls, so every order of
derivative goes through the Functions again. Under a functorch transform they are decomposed at
the front key (below), so that their inner ddf calls reach the Functions' batching rules rather
than functorch's per-sample fallback.
"""

import inspect
import warnings

import torch
from torch._C._functorch import TransformType

_OPS = torch.ops.ddf
_ddf = torch.ops.ddf.ddf.default
_ddf_backward = torch.ops.ddf.ddf_backward.default
_ddf_backward_backward = torch.ops.ddf._ddf_backward_backward.default
_ddf_jvp = torch.ops.ddf._ddf_jvp.default
_ddf_backward_jvp = torch.ops.ddf._ddf_backward_jvp.default
_DERIVATIVE_OPS = (_ddf_backward_backward, _ddf_jvp, _ddf_backward_jvp)


def _forward_ad_active() -> bool:
    return torch.autograd.forward_ad._current_level >= 0


# ---------------------------------------------------------------------------------------------
# Batching: fold the vmapped dimension into the batch dimension.


def _fold(tensor, in_dim, size):
    """(N, B, ...) with the vmapped dimension first, as (N*B, ...); unbatched ones expanded."""
    if tensor is None:
        return None
    tensor = tensor.unsqueeze(0).expand(size, *tensor.shape) if in_dim is None else tensor.movedim(in_dim, 0)
    return tensor.reshape(size * tensor.shape[1], *tensor.shape[2:])


def _unfold(tensor, size):
    if tensor is None:
        return None
    return tensor.reshape(size, tensor.shape[0] // size, *tensor.shape[1:])


class DDFFunction(torch.autograd.Function):
    """``ddf::ddf`` as a Python autograd Function: backward, jvp and a batching rule."""

    @staticmethod
    def forward(input, channel_filter, spatial_filter, stride=1, dilation=1, combine="mul"):
        with torch._C._AutoDispatchBelowAutograd():
            return _ddf(input, channel_filter, spatial_filter, stride, dilation, combine)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, channel_filter, spatial_filter, stride, dilation, combine = inputs
        ctx.save_for_backward(input, channel_filter, spatial_filter)
        ctx.save_for_forward(input, channel_filter, spatial_filter)
        ctx.attributes = (stride, dilation, combine)

    @staticmethod
    def backward(ctx, grad_output):
        mask = list(ctx.needs_input_grad[:3])
        if grad_output is None or not any(mask):
            return None, None, None, None, None, None
        input, channel_filter, spatial_filter = ctx.saved_tensors
        grads = _ddf_backward(grad_output, input, channel_filter, spatial_filter, *ctx.attributes, mask)
        return (*grads, None, None, None)

    @staticmethod
    def jvp(ctx, d_input, d_channel_filter, d_spatial_filter, *_):
        tangents = (d_input, d_channel_filter, d_spatial_filter)
        return _ddf_jvp(*ctx.saved_tensors, *tangents, *ctx.attributes)

    @staticmethod
    def vmap(info, in_dims, input, channel_filter, spatial_filter, stride, dilation, combine):
        n = info.batch_size
        folded = [_fold(t, d, n) for t, d in zip((input, channel_filter, spatial_filter), in_dims)]
        out = DDFFunction.apply(*folded, stride, dilation, combine)
        return _unfold(out, n), 0


class DDFBackwardFunction(torch.autograd.Function):
    """``ddf::ddf_backward`` as a Python autograd Function (double backward, jvp, batching)."""

    @staticmethod
    def forward(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask):
        with torch._C._AutoDispatchBelowAutograd():
            return _ddf_backward(
                grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask
            )

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask = inputs
        ctx.save_for_backward(grad_output, input, channel_filter, spatial_filter)
        ctx.save_for_forward(grad_output, input, channel_filter, spatial_filter)
        ctx.attributes = (stride, dilation, combine)
        ctx.output_mask = list(output_mask)

    @staticmethod
    def backward(ctx, g_input, g_channel_filter, g_spatial_filter):
        # Only the outputs that were computed (output_mask) carry a gradient.
        incoming = (g_input, g_channel_filter, g_spatial_filter)
        incoming = [g if wanted else None for g, wanted in zip(incoming, ctx.output_mask)]
        needed = list(ctx.needs_input_grad[:4])
        grads = _ddf_backward_backward(*ctx.saved_tensors, *incoming, *ctx.attributes, needed)
        return (*grads, None, None, None, None)

    @staticmethod
    def jvp(ctx, d_grad_output, d_input, d_channel_filter, d_spatial_filter, *_):
        tangents = (d_grad_output, d_input, d_channel_filter, d_spatial_filter)
        return tuple(_ddf_backward_jvp(*ctx.saved_tensors, *tangents, *ctx.attributes, ctx.output_mask))

    @staticmethod
    def vmap(info, in_dims, grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask):
        n = info.batch_size
        tensors = (grad_output, input, channel_filter, spatial_filter)
        folded = [_fold(t, dim, n) for t, dim in zip(tensors, in_dims)]
        grads = DDFBackwardFunction.apply(*folded, stride, dilation, combine, mask)
        return tuple(_unfold(g, n) for g in grads), tuple(None if g is None else 0 for g in grads)


# torch's Function.apply binds the forward's default arguments through
# inspect.signature(forward) on every call: about 40% of the grad-enabled forward's host time
# (benchmarks/bench_host.py; a GPU training step at 28² and below waits on the host). A
# signature set on the function is returned as it is.
for _function in (DDFFunction, DDFBackwardFunction):
    _function.forward.__signature__ = inspect.signature(_function.forward)


# ---------------------------------------------------------------------------------------------
# Kernels.


def _needs_function(*tensors) -> bool:
    return (torch.is_grad_enabled() and torch._C._any_requires_grad(*tensors)) or _forward_ad_active()


def _ddf_autograd(keyset, input, channel_filter, spatial_filter, stride=1, dilation=1, combine="mul"):
    if _needs_function(input, channel_filter, spatial_filter):
        return DDFFunction.apply(input, channel_filter, spatial_filter, stride, dilation, combine)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.ddf.ddf.default.redispatch(
            keyset & torch._C._after_autograd_keyset, input, channel_filter, spatial_filter, stride, dilation, combine
        )


def _ddf_backward_autograd(keyset, grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask):
    if _needs_function(grad_output, input, channel_filter, spatial_filter):
        return DDFBackwardFunction.apply(
            grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask
        )
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.ddf.ddf_backward.default.redispatch(
            keyset & torch._C._after_autograd_keyset,
            grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask,
        )  # fmt: skip


def _functorch_kernel(function, op):
    """The FuncTorchDynamicLayerFrontMode kernel: the Python Function under grad/jvp/vmap;
    functionalize (which custom_function_call does not support) treats the op as functional."""

    def kernel(*args):
        from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

        interpreter = retrieve_current_functorch_interpreter()
        if interpreter.key() == TransformType.Functionalize:
            from torch._subclasses.functional_tensor import FunctorchFunctionalizeAPI

            api = FunctorchFunctionalizeAPI(interpreter)
            with api.redispatch_to_next():
                return api.wrap_tensors(op(*api.unwrap_tensors(args)))
        return function.apply(*args)

    return kernel


def _decomposing_kernel(op):
    """The FuncTorchDynamicLayerFrontMode kernel of a derivative op: its C++ composite kernel
    run directly, so that its ddf/ddf_backward calls enter the front key again and reach the
    Functions above (functorch has no batching rule for the op itself)."""

    def kernel(*args):
        return op.decompose(*args)

    return kernel


_LIBRARY = None


def register() -> None:
    """Registers the kernels once per process (``import ddf_ops`` calls this)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    library = torch.library.Library("ddf", "IMPL")
    with warnings.catch_warnings():
        # Replacing the library's C++ Autograd kernel is the point.
        warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
        library.impl("ddf", _ddf_autograd, "Autograd", with_keyset=True)
        library.impl("ddf_backward", _ddf_backward_autograd, "Autograd", with_keyset=True)
        library.impl("ddf", _functorch_kernel(DDFFunction, _ddf), "FuncTorchDynamicLayerFrontMode")
        library.impl(
            "ddf_backward", _functorch_kernel(DDFBackwardFunction, _ddf_backward), "FuncTorchDynamicLayerFrontMode"
        )
    for op in _DERIVATIVE_OPS:
        library.impl(op._schema.name.split("::")[1], _decomposing_kernel(op), "FuncTorchDynamicLayerFrontMode")
    _LIBRARY = library
