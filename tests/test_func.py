"""torch.func transforms and forward-mode AD on the ddf ops (ddf_ops/_transforms.py), against
the same transforms of the pure-PyTorch reference, in float64."""

import itertools
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

import ddf_ops
from conftest import make_inputs

func = torch.func
TOL = dict(rtol=1e-10, atol=1e-10)
# (k, G, stride, dilation): a plain case, and strided + dilated with two heads.
CONFIGS = [(3, 1, 1, 1), (3, 2, 2, 2)]
CONFIG_IDS = ["k3", "k3-G2-s2-d2"]


@pytest.fixture(autouse=True)
def _no_user_warnings():
    """The vmap fallback announces itself with a UserWarning ("There is a performance drop
    because we have not yet implemented the batching rule"): none may appear."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


class OpCalls(TorchDispatchMode):
    """Counts the calls of each operator that reach the kernels."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, op, types, args=(), kwargs=None):
        self.counts[op] = self.counts.get(op, 0) + 1
        return op(*args, **(kwargs or {}))


def both(stride, dilation, combine):
    """The op and the reference as functions of (input, channel_filter, spatial_filter)."""

    def op(x, cf, sf):
        return ddf_ops.ddf(x, cf, sf, stride, dilation, combine)

    def ref(x, cf, sf):
        return ddf_ops.reference.ddf(x, cf, sf, stride, dilation, combine)

    return op, ref


def inputs(k, G, stride, B=2, C=4, H=7, W=6, seed=0):
    return make_inputs(B, C, H, W, k, G, stride, seed=seed)


def loss(f):
    # A non-quadratic loss, so the Hessian depends on where it is taken.
    return lambda x, cf, sf: f(x, cf, sf).sin().sum()


TRANSFORMS = {
    "grad": lambda f: func.grad(loss(f), argnums=(0, 1, 2)),
    "vjp": lambda f: (lambda *a: func.vjp(f, *a)[1](torch.cos(f(*a).detach()))),
    "jacrev": lambda f: func.jacrev(f, argnums=(0, 1, 2)),
    "jacfwd": lambda f: func.jacfwd(f, argnums=(0, 1, 2)),
    "jvp": lambda f: (lambda *a: func.jvp(f, a, tuple(t.cos() for t in a))),
}


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,G,stride,dilation", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transform_matches_reference(transform, k, G, stride, dilation, combine):
    op, ref = both(stride, dilation, combine)
    args = inputs(k, G, stride, B=1 if transform.startswith("jac") else 2)
    got = TRANSFORMS[transform](op)(*args)
    expected = TRANSFORMS[transform](ref)(*args)
    torch.testing.assert_close(got, expected, **TOL)
    assert any(t.abs().max() > 0 for t in torch.utils._pytree.tree_leaves(got))


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,G,stride,dilation", CONFIGS, ids=CONFIG_IDS)
def test_hessian_matches_reference(k, G, stride, dilation, combine):
    op, ref = both(stride, dilation, combine)
    args = make_inputs(1, 2, 5, 4, k, G, stride)
    got = func.hessian(loss(op), argnums=(0, 1, 2))(*args)
    expected = func.hessian(loss(ref), argnums=(0, 1, 2))(*args)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,G,stride,dilation", CONFIGS, ids=CONFIG_IDS)
def test_gradcheck_forward_and_backward_ad(k, G, stride, dilation, combine):
    op, _ = both(stride, dilation, combine)
    args = [t.requires_grad_() for t in make_inputs(1, 4, 5, 4, k, G, stride)]
    assert torch.autograd.gradcheck(op, args, check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(op, args, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_gradcheck_of_backward_op_forward_ad(combine):
    x, cf, sf = make_inputs(1, 2, 4, 3, 3, 2, 2)
    go = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    args = [t.requires_grad_() for t in (go, x, cf, sf)]
    for mask in ([True, True, True], [False, True, False]):

        def fn(*a):
            return [g for g in torch.ops.ddf.ddf_backward(*a, 2, 1, combine, mask) if g is not None]

        assert torch.autograd.gradcheck(fn, args, check_forward_ad=True, check_backward_ad=False), mask


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_forward_ad_dual_tensors(combine):
    op, ref = both(2, 1, combine)
    primals = inputs(3, 2, 2)
    tangents = [t.cos() for t in inputs(3, 2, 2, seed=1)]
    for which in itertools.product([False, True], repeat=3):  # every subset of tangents
        if not any(which):
            continue
        results = []
        for f in (op, ref):
            with fwAD.dual_level():
                duals = [fwAD.make_dual(p, t) if w else p for p, t, w in zip(primals, tangents, which)]
                out = fwAD.unpack_dual(f(*duals))
                results.append((out.primal, out.tangent))
        torch.testing.assert_close(results[0], results[1], **TOL, msg=str(which))


# vmap: in_dims for (input, channel_filter, spatial_filter); None = shared by the whole map.
IN_DIMS = [(0, 0, 0), (0, None, None), (None, 1, None), (None, None, 2), (2, 0, None)]


def batched(t, dim, n, seed):
    if dim is None:
        return t
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *t.shape, generator=gen, dtype=t.dtype).movedim(0, dim)


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("in_dims", IN_DIMS, ids=str)
def test_vmap_is_one_op_call(in_dims, combine):
    op, ref = both(2, 2, combine)
    base = inputs(3, 2, 2)
    args = [batched(t, d, 5, seed) for seed, (t, d) in enumerate(zip(base, in_dims))]
    with OpCalls() as calls:
        got = torch.vmap(op, in_dims=in_dims)(*args)
    assert calls.counts.get(torch.ops.ddf.ddf.default) == 1
    samples = [[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)] for i in range(5)]
    expected = torch.stack([ref(*sample) for sample in samples])
    torch.testing.assert_close(got, expected, **TOL)


def test_nested_vmap_is_one_op_call():
    op, ref = both(2, 1, "mul")
    x, cf, sf = inputs(3, 2, 2)
    xs = batched(batched(x, 0, 3, 1), 1, 4, 2)  # (3, 4, B, ...): outer map over dim 1, inner over dim 0
    sfs = batched(sf, 0, 4, 3)  # batched for the outer map only
    nested = lambda f: torch.vmap(torch.vmap(f, in_dims=(0, None, None)), in_dims=(1, None, 0))  # noqa: E731
    with OpCalls() as calls:
        got = nested(op)(xs, cf, sfs)
    assert calls.counts.get(torch.ops.ddf.ddf.default) == 1
    assert got.shape == (4, 3, *x.shape[:2], 4, 3)
    torch.testing.assert_close(got, nested(ref)(xs, cf, sfs), **TOL)


def test_vmap_of_backward_op_is_one_call():
    x, cf, sf = inputs(3, 2, 2)
    gos = torch.randn(6, 2, 4, 4, 3, dtype=torch.float64)
    mask = [True, False, True]
    backward = lambda go: torch.ops.ddf.ddf_backward(go, x, cf, sf, 2, 1, "mul", mask)  # noqa: E731
    with OpCalls() as calls:
        gi, gc, gs = torch.vmap(backward, out_dims=(0, None, 0))(gos)
    assert calls.counts.get(torch.ops.ddf.ddf_backward.default) == 1 and gc is None
    for i, go in enumerate(gos):
        expected = torch.ops.ddf.ddf_backward(go, x, cf, sf, 2, 1, "mul", mask)
        torch.testing.assert_close((gi[i], gs[i]), (expected[0], expected[2]), **TOL)


def test_per_sample_gradients():
    """vmap(grad(...)): the usual per-sample-gradient recipe, one op call each way."""
    op, ref = both(1, 1, "add")
    x, cf, sf = inputs(3, 2, 1, B=4)

    def per_sample(f):
        def sample_loss(cf, sf, xi):  # the filters are the "parameters"
            return f(xi[None], cf[None], sf[None]).pow(2).sum()

        return torch.vmap(func.grad(sample_loss, argnums=(0, 1)), in_dims=(0, 0, 0))

    with OpCalls() as calls:
        got = per_sample(op)(cf, sf, x)
    assert calls.counts.get(torch.ops.ddf.ddf.default) == 1
    assert calls.counts.get(torch.ops.ddf.ddf_backward.default) == 1
    torch.testing.assert_close(got, per_sample(ref)(cf, sf, x), **TOL)


def test_functionalize_still_sees_one_functional_op():
    op, _ = both(2, 1, "mul")
    args = inputs(3, 2, 2)
    graph = torch.fx.experimental.proxy_tensor.make_fx(func.functionalize(op))(*args)
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.ddf.ddf.default]
    torch.testing.assert_close(graph(*args), op(*args), **TOL)


def test_registered_at_autograd_and_functorch_keys():
    for name in ("ddf::ddf", "ddf::ddf_backward"):
        for key in ("Autograd", "FuncTorchDynamicLayerFrontMode"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)


def test_function_apply_does_not_rebuild_the_forward_signature():
    """Function.apply binds default arguments through inspect.signature(forward) on every call;
    the forwards carry a precomputed signature (_transforms.py), which inspect returns as it is
    instead of rebuilding it from the function (half the Python forward's host time)."""
    import inspect
    from unittest import mock

    x, cf, sf = make_inputs(1, 4, 5, 5, requires_grad=True)

    def step():
        out = ddf_ops.ddf(x, cf, sf)
        (gx, _, _) = torch.autograd.grad(out, (x, cf, sf), torch.ones_like(out), create_graph=True)
        torch.autograd.grad(gx.sum(), (x, cf, sf), allow_unused=True)  # DDFBackwardFunction too

    step()  # the first call imports modules that read signatures once
    with mock.patch.object(inspect, "_signature_from_function", side_effect=AssertionError("signature rebuilt")):
        step()
