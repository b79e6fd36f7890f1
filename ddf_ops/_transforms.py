"""torch.func transforms and forward-mode AD for the ddf ops (registered by ``import ddf_ops``).

The compiled library's autograd kernel is a C++ ``torch::autograd::Function``, which PyTorch
cannot combine with functorch transforms (torch.func.grad, vjp, jacrev, jvp, jacfwd, hessian,
vmap) or with forward-mode AD. Python ``torch.autograd.Function`` can: a ``setup_context``
staticmethod makes it work with the grad transforms, ``jvp`` with forward-mode AD, and ``vmap``
gives it a batching rule. So importing ``ddf_ops`` registers, for both ``ddf::ddf`` and
``ddf::ddf_backward``:

- ``Autograd``: the Python Function below in place of the C++ one, so eager autograd, double
  backward, ``torch.autograd.forward_ad``, torch.compile and torch.export use it. The formulas
  are those of ``csrc/autograd/ddf_autograd.cpp``; a process that only runs
  ``torch.ops.load_library`` keeps the C++ kernel (and so has no forward-mode AD).
- ``FuncTorchDynamicLayerFrontMode``: the key the dispatcher reaches first while a functorch
  transform is active. The kernel hands the call to the Python Function, which routes it through
  functorch's ``custom_function_call``, exactly as if the Function had been called directly.
  (``torch.library.register_autograd`` and ``register_vmap`` do not help here: the former only
  registers an Autograd kernel, which functorch's grad transforms do not accept from a custom
  op, the latter only vmap.)

The batching rule folds the vmapped dimension into the op's batch dimension B: one op call per
vmap level, whatever the vmapped size; unbatched arguments are expanded.

DDF is linear in the input and, for "mul", in each filter, so every derivative is again a sum
of ddf and ddf_backward calls. Write T(X, a, b) = ddf(X, a, b) and A_X, A_cf, A_sf for the
outputs of ddf_backward:

- tangent of ddf:  mul: T(dX,cf,sf) + T(X,dcf,sf) + T(X,cf,dsf);
  add: T(dX,cf,sf) + T(X,dcf,dsf), since T(X,a,b) = sum X*(a+b) is linear in (a, b) jointly.
- ddf_backward is linear in grad_output and (as A_X, A_cf, A_sf are T's adjoints) has the same
  structure in the other arguments; its backward is the double backward of the C++ kernel.
"""

import warnings

import torch
from torch._C._functorch import TransformType

_OPS = torch.ops.ddf
_ddf = torch.ops.ddf.ddf.default
_ddf_backward = torch.ops.ddf.ddf_backward.default


def _add(a, b):
    """a + b where either may be None (no contribution)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


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
        input, channel_filter, spatial_filter = ctx.saved_tensors
        stride, dilation, combine = ctx.attributes
        tangent = None
        if d_input is not None:
            tangent = _ddf(d_input, channel_filter, spatial_filter, stride, dilation, combine)
        if combine == "mul":
            if d_channel_filter is not None:
                tangent = _add(tangent, _ddf(input, d_channel_filter, spatial_filter, stride, dilation, combine))
            if d_spatial_filter is not None:
                tangent = _add(tangent, _ddf(input, channel_filter, d_spatial_filter, stride, dilation, combine))
        elif d_channel_filter is not None or d_spatial_filter is not None:
            d_cf = torch.zeros_like(channel_filter) if d_channel_filter is None else d_channel_filter
            d_sf = torch.zeros_like(spatial_filter) if d_spatial_filter is None else d_spatial_filter
            tangent = _add(tangent, _ddf(input, d_cf, d_sf, stride, dilation, combine))
        return tangent

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
        go, x, cf, sf = ctx.saved_tensors
        s, d, combine = ctx.attributes
        need_go, need_x, need_cf, need_sf = ctx.needs_input_grad[:4]
        incoming = (g_input, g_channel_filter, g_spatial_filter)
        gX, gcf, gsf = (g if wanted else None for g, wanted in zip(incoming, ctx.output_mask))
        d_go = d_x = d_cf = d_sf = None
        if combine == "mul":
            if need_go:
                if gX is not None:
                    d_go = _add(d_go, _ddf(gX, cf, sf, s, d, combine))
                if gcf is not None:
                    d_go = _add(d_go, _ddf(x, gcf, sf, s, d, combine))
                if gsf is not None:
                    d_go = _add(d_go, _ddf(x, cf, gsf, s, d, combine))
            if gX is not None and (need_cf or need_sf):
                _, c1, s1 = _ddf_backward(go, gX, cf, sf, s, d, combine, [False, need_cf, need_sf])
                d_cf, d_sf = _add(d_cf, c1), _add(d_sf, s1)
            if gcf is not None and (need_x or need_sf):
                x1, _, s1 = _ddf_backward(go, x, gcf, sf, s, d, combine, [need_x, False, need_sf])
                d_x, d_sf = _add(d_x, x1), _add(d_sf, s1)
            if gsf is not None and (need_x or need_cf):
                x1, c1, _ = _ddf_backward(go, x, cf, gsf, s, d, combine, [need_x, need_cf, False])
                d_x, d_cf = _add(d_x, x1), _add(d_cf, c1)
        else:
            any_filter_grad = gcf is not None or gsf is not None
            gcf_ = torch.zeros_like(cf) if gcf is None else gcf
            gsf_ = torch.zeros_like(sf) if gsf is None else gsf
            if need_go:
                if gX is not None:
                    d_go = _add(d_go, _ddf(gX, cf, sf, s, d, combine))
                if any_filter_grad:
                    d_go = _add(d_go, _ddf(x, gcf_, gsf_, s, d, combine))
            if need_x and any_filter_grad:
                d_x = _ddf_backward(go, x, gcf_, gsf_, s, d, combine, [True, False, False])[0]
            if gX is not None and (need_cf or need_sf):
                _, d_cf, d_sf = _ddf_backward(go, gX, cf, sf, s, d, combine, [False, need_cf, need_sf])
        return d_go, d_x, d_cf, d_sf, None, None, None, None

    @staticmethod
    def jvp(ctx, d_go, d_x, d_cf, d_sf, *_):
        go, x, cf, sf = ctx.saved_tensors
        s, d, combine = ctx.attributes
        mask = ctx.output_mask
        tangents = [None, None, None]

        def accumulate(grads):
            for i, g in enumerate(grads):
                if g is not None:
                    tangents[i] = _add(tangents[i], g)

        def masked(*wanted):
            return [m and w for m, w in zip(mask, wanted)]

        if d_go is not None:
            accumulate(_ddf_backward(d_go, x, cf, sf, s, d, combine, mask))
        if d_x is not None and any(masked(False, True, True)):
            accumulate(_ddf_backward(go, d_x, cf, sf, s, d, combine, masked(False, True, True)))
        if combine == "mul":
            if d_cf is not None and any(masked(True, False, True)):
                accumulate(_ddf_backward(go, x, d_cf, sf, s, d, combine, masked(True, False, True)))
            if d_sf is not None and any(masked(True, True, False)):
                accumulate(_ddf_backward(go, x, cf, d_sf, s, d, combine, masked(True, True, False)))
        elif (d_cf is not None or d_sf is not None) and mask[0]:
            d_cf_ = torch.zeros_like(cf) if d_cf is None else d_cf
            d_sf_ = torch.zeros_like(sf) if d_sf is None else d_sf
            accumulate(_ddf_backward(go, x, d_cf_, d_sf_, s, d, combine, [True, False, False]))
        # A requested gradient whose tangent got no contribution has a zero tangent.
        reference = (x, cf, sf)
        return tuple(
            (torch.zeros_like(reference[i]) if t is None else t) if mask[i] else None for i, t in enumerate(tangents)
        )

    @staticmethod
    def vmap(info, in_dims, grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask):
        n = info.batch_size
        tensors = (grad_output, input, channel_filter, spatial_filter)
        folded = [_fold(t, dim, n) for t, dim in zip(tensors, in_dims)]
        grads = DDFBackwardFunction.apply(*folded, stride, dilation, combine, mask)
        return tuple(_unfold(g, n) for g in grads), tuple(None if g is None else 0 for g in grads)


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
    _LIBRARY = library
