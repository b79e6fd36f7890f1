"""The derivative algebra, written once in C++ (csrc/autograd/ddf_derivatives.cpp), checked
through both autograds that call it:

- the C++ autograd kernel, in a process that only loads the library (``import ddf_ops``
  replaces it with the Python one): gradcheck and gradgradcheck over the geometry matrix, and
  second derivatives that must match the Python Function's in this process;
- the private derivative ops and the Python Functions in this process, against the autograd
  of the pure-PyTorch reference (double backward, and forward-mode tangents).
"""

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

import ddf_ops
from conftest import make_inputs

TOL = dict(rtol=1e-10, atol=1e-10)
C = 4  # channels; heads G in {1, 2, C}
SIZE = (5, 4)  # H, W: small, so that the full matrix runs in seconds

# (k, stride, dilation, G, combine). Every stride x dilation x G x combine, with k cycling
# through 1, 3, 5 so that each k meets every other value too.
MATRIX = [
    ((1, 3, 5)[i % 3], stride, dilation, G, combine)
    for i, (stride, dilation, G, combine) in enumerate(itertools.product([1, 2, 3], [1, 2], [1, 2, C], ["mul", "add"]))
]
# The cases whose second derivatives are compared across the two autograds.
COMPARED = [(3, 2, 2, 2, "mul"), (3, 2, 2, 2, "add"), (5, 1, 1, C, "mul"), (1, 3, 2, 1, "add")]
MASKS = [list(m) for m in itertools.product([False, True], repeat=3) if any(m)]


def inputs(k, stride, G, seed=0, requires_grad=False):
    return make_inputs(1, C, *SIZE, k, G, stride, seed=seed, requires_grad=requires_grad)


# Runs in a fresh process that never imports ddf_ops, so the ops' Autograd kernel is the C++
# one. argv: library path, the cases (a Python literal), the path to save the compared
# second derivatives to. The inputs come from the parent, so both processes use the same.
LIBRARY_ONLY_SCRIPT = textwrap.dedent(
    """
    import ast, sys
    import torch
    torch.ops.load_library(sys.argv[1])
    assert "ddf_ops" not in sys.modules
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("ddf::ddf", "FuncTorchDynamicLayerFrontMode")
    data = torch.load(sys.argv[2])
    op, op_backward = torch.ops.ddf.ddf, torch.ops.ddf.ddf_backward
    failures = []

    def check(name, ok):
        if not ok:
            failures.append(name)

    # fast_mode (random projections of the Jacobians) over the matrix, the full Jacobians
    # for one case: full gradgradchecks of the whole matrix take minutes.
    for i, ((k, stride, dilation, G, combine), args) in enumerate(zip(data["matrix"], data["matrix_inputs"])):
        args = [t.requires_grad_() for t in args]
        fn = lambda *a: op(*a, stride, dilation, combine)
        name = f"k={k} stride={stride} dilation={dilation} G={G} {combine}"
        fast = i != data["full"]
        check(name + " gradcheck", torch.autograd.gradcheck(fn, args, fast_mode=fast, raise_exception=False))
        check(name + " gradgradcheck", torch.autograd.gradgradcheck(fn, args, fast_mode=fast, raise_exception=False))

    # ddf_backward's own backward with every output mask (the double backward of partial
    # gradients), and a third derivative.
    go, x, cf, sf = [t.requires_grad_() for t in data["backward_inputs"]]
    for combine in ("mul", "add"):
        for mask in data["masks"]:
            fn = lambda *a: [g for g in op_backward(*a, 2, 1, combine, mask) if g is not None]
            check(f"ddf_backward {combine} {mask} gradcheck",
                  torch.autograd.gradcheck(fn, (go, x, cf, sf), fast_mode=True, raise_exception=False))
    fn = lambda *a: op(*a, 2, 1, "mul")
    check("third order", torch.autograd.gradgradcheck(
        lambda *a: torch.autograd.grad(fn(*a).pow(2).sum(), a, create_graph=True), (x, cf, sf),
        fast_mode=True, raise_exception=False))

    # Second derivatives for the parent to compare with the Python Function's.
    results = []
    for (k, stride, dilation, G, combine), (x, cf, sf, go, v) in zip(data["compared"], data["compared_inputs"]):
        x, cf, sf, go = [t.requires_grad_() for t in (x, cf, sf, go)]
        g = torch.autograd.grad(op(x, cf, sf, stride, dilation, combine), (x, cf, sf), go, create_graph=True)
        inner = sum((gi * vi).sum() for gi, vi in zip(g, v))
        results.append(torch.autograd.grad(inner, (go, x, cf, sf)))
    torch.save(results, sys.argv[3])
    print("FAILED: " + "; ".join(failures) if failures else "OK")
    """
)


def second_derivatives(function, x, cf, sf, go, v, stride, dilation, combine):
    """d/d(go, x, cf, sf) of <v, d/d(x, cf, sf) <go, function(x, cf, sf)>>."""
    x, cf, sf, go = [t.detach().requires_grad_() for t in (x, cf, sf, go)]
    g = torch.autograd.grad(function(x, cf, sf, stride, dilation, combine), (x, cf, sf), go, create_graph=True)
    inner = sum((gi * vi).sum() for gi, vi in zip(g, v))
    return torch.autograd.grad(inner, (go, x, cf, sf))


def compared_inputs(k, stride, G, seed):
    x, cf, sf = inputs(k, stride, G, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    go = torch.randn(1, C, sf.shape[2], sf.shape[3], dtype=torch.float64, generator=gen)
    v = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in (x, cf, sf)]
    return x, cf, sf, go, v


def test_cpp_autograd_gradcheck_and_gradgradcheck(tmp_path):
    """The C++ autograd kernel: first and second derivatives by finite differences over the
    geometry matrix, and second derivatives equal to the Python Function's (float64 rounding:
    the two run the same kernels in the same order)."""
    data = {
        "matrix": MATRIX,
        "full": MATRIX.index((3, 1, 1, C, "mul")),  # the case checked with full Jacobians
        "matrix_inputs": [inputs(k, stride, G, seed=i) for i, (k, stride, _, G, _) in enumerate(MATRIX)],
        "backward_inputs": (torch.randn(1, C, 3, 2, dtype=torch.float64), *make_inputs(1, C, 5, 4, 3, 2, 2)),
        "masks": MASKS,
        "compared": COMPARED,
        "compared_inputs": [compared_inputs(k, stride, G, seed=i) for i, (k, stride, _, G, _) in enumerate(COMPARED)],
    }
    torch.save(data, tmp_path / "in.pt")
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_ONLY_SCRIPT, ddf_ops.library_path(), tmp_path / "in.pt", tmp_path / "out.pt"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK"), result.stdout
    cpp = torch.load(tmp_path / "out.pt")
    for case, args, got in zip(COMPARED, data["compared_inputs"], cpp):
        stride, dilation, combine = case[1], case[2], case[4]
        expected = second_derivatives(ddf_ops.ddf, *args, stride, dilation, combine)
        for name, a, b in zip(("grad_output", "input", "channel_filter", "spatial_filter"), got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{case} d/d{name}")


# ---------------------------------------------------------------------------------------------
# In this process: the ops and the Python Functions against the reference's autograd.

CASES = [(3, 1, 1, 1), (3, 2, 2, 2), (5, 3, 1, C), (1, 2, 2, 2)]  # k, stride, dilation, G
CASE_IDS = ["k3", "k3-s2-d2-G2", "k5-s3-G4", "k1-s2-d2-G2"]


def reference_backward(go, x, cf, sf, stride, dilation, combine):
    """ddf_backward by autograd of the reference, differentiable again."""
    out = ddf_ops.reference.ddf(x, cf, sf, stride, dilation, combine)
    return torch.autograd.grad(out, (x, cf, sf), go, create_graph=True)


def primals_and_tangents(k, stride, G):
    x, cf, sf = inputs(k, stride, G, seed=1)
    gen = torch.Generator().manual_seed(2)
    go = torch.randn(1, C, sf.shape[2], sf.shape[3], dtype=torch.float64, generator=gen)
    tangents = [torch.randn_like(t).cos() for t in (go, x, cf, sf)]
    return (go, x, cf, sf), tangents


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation,G", CASES, ids=CASE_IDS)
def test_backward_backward_op_matches_reference(k, stride, dilation, G, combine):
    """_ddf_backward_backward for every subset of incoming gradients and every output mask;
    an output that nothing contributes to is None, and the reference's is zero there."""
    primals, tangents = primals_and_tangents(k, stride, G)
    incoming = tangents[1:]  # gradients shaped like ddf_backward's outputs
    leaves = [t.detach().requires_grad_() for t in primals]
    reference_grads = reference_backward(*leaves, stride, dilation, combine)
    for given in itertools.product([False, True], repeat=3):
        if not any(given):
            continue
        grads = [g if use else None for g, use in zip(incoming, given)]
        inner = sum((r * g).sum() for r, g in zip(reference_grads, grads) if g is not None)
        expected = torch.autograd.grad(inner, leaves, retain_graph=True, allow_unused=True)
        for mask in itertools.product([False, True], repeat=4):
            got = torch.ops.ddf._ddf_backward_backward(*primals, *grads, stride, dilation, combine, list(mask))
            names = ("grad_output", "input", "channel_filter", "spatial_filter")
            for name, want, a, b in zip(names, mask, got, expected):
                where = f"d/d{name} given={given} mask={mask}"
                if not want:
                    assert a is None, where
                elif a is None:
                    assert b is None or torch.count_nonzero(b) == 0, where
                else:
                    torch.testing.assert_close(a, b, **TOL, msg=where)


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation,G", CASES, ids=CASE_IDS)
def test_jvp_ops_match_reference(k, stride, dilation, G, combine):
    """_ddf_jvp and _ddf_backward_jvp for every subset of tangents, against torch.func.jvp of
    the reference and of its backward."""
    primals, tangents = primals_and_tangents(k, stride, G)
    go, x, cf, sf = primals
    ref = lambda *a: ddf_ops.reference.ddf(*a, stride, dilation, combine)  # noqa: E731
    ref_backward = lambda go, *a: torch.func.vjp(ref, *a)[1](go)  # noqa: E731
    for given in itertools.product([False, True], repeat=4):
        if not any(given):
            continue
        ts = [t if use else torch.zeros_like(t) for t, use in zip(tangents, given)]
        opt = [t if use else None for t, use in zip(tangents, given)]
        if any(given[1:]):
            expected = torch.func.jvp(ref, (x, cf, sf), tuple(ts[1:]))[1]
            got = torch.ops.ddf._ddf_jvp(x, cf, sf, *opt[1:], stride, dilation, combine)
            torch.testing.assert_close(got, expected, **TOL, msg=f"_ddf_jvp given={given[1:]}")
        expected = torch.func.jvp(ref_backward, tuple(primals), tuple(ts))[1]
        for mask in MASKS:
            got = torch.ops.ddf._ddf_backward_jvp(*primals, *opt, stride, dilation, combine, mask)
            for want, a, b in zip(mask, got, expected):
                if want:
                    torch.testing.assert_close(a, b, **TOL, msg=f"_ddf_backward_jvp given={given} mask={mask}")
                else:
                    assert a is None


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation,G", CASES, ids=CASE_IDS)
def test_python_function_matches_reference(k, stride, dilation, G, combine):
    """The Python Functions that ``import ddf_ops`` registers: double backward, forward-mode
    tangent, and the tangent of the gradient (forward over reverse), through ddf_ops.ddf."""
    (go, x, cf, sf), tangents = primals_and_tangents(k, stride, G)
    op = lambda *a: ddf_ops.ddf(*a, stride, dilation, combine)  # noqa: E731
    ref = lambda *a: ddf_ops.reference.ddf(*a, stride, dilation, combine)  # noqa: E731
    v = tangents[1:]
    got = second_derivatives(ddf_ops.ddf, x, cf, sf, go, v, stride, dilation, combine)
    expected = second_derivatives(ddf_ops.reference.ddf, x, cf, sf, go, v, stride, dilation, combine)
    torch.testing.assert_close(got, expected, **TOL)

    def tangent(function):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip((x, cf, sf), tangents[1:])]
            return fwAD.unpack_dual(function(*duals)).tangent

    torch.testing.assert_close(tangent(op), tangent(ref), **TOL)

    def gradient(function):
        return lambda go, *a: torch.func.vjp(function, *a)[1](go)

    got = torch.func.jvp(gradient(op), (go, x, cf, sf), tuple(tangents))
    expected = torch.func.jvp(gradient(ref), (go, x, cf, sf), tuple(tangents))
    torch.testing.assert_close(got, expected, **TOL)


# ---------------------------------------------------------------------------------------------
# The derivative ops as ops: CompositeImplicitAutograd with optional tensors and undefined
# outputs, which fake tensors, aot dispatch and torch.func must accept.


def derivative_op_calls():
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 2, 2)
    go = torch.randn(2, 4, 4, 3, dtype=torch.float64)
    gx, gcf, gsf = (torch.randn_like(t) for t in (x, cf, sf))
    ops = torch.ops.ddf
    return [
        (ops._ddf_backward_backward.default, (go, x, cf, sf, gx, None, gsf, 2, 1, "mul", [True, True, True, False])),
        (ops._ddf_backward_backward.default, (go, x, cf, sf, None, gcf, None, 2, 1, "add", [True] * 4)),
        (ops._ddf_jvp.default, (x, cf, sf, None, gcf, None, 2, 1, "add")),
        (ops._ddf_backward_jvp.default, (go, x, cf, sf, None, gx, None, gsf, 2, 1, "mul", [True, False, True])),
    ]


@pytest.mark.parametrize("index", range(4))
def test_opcheck_derivative_ops(index):
    op, args = derivative_op_calls()[index]
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    assert torch.library.opcheck(op, args, test_utils=checks) == {name: "SUCCESS" for name in checks}


def test_vmap_of_derivative_op_reaches_the_batching_rule():
    """Under vmap the op decomposes at functorch's front key: its ddf calls take the ddf
    batching rule (one call each), not functorch's per-sample fallback."""
    x, cf, sf = inputs(3, 2, 2)
    tangents = torch.randn(5, *x.shape, dtype=torch.float64)
    jvp = lambda t: torch.ops.ddf._ddf_jvp(x, cf, sf, t, None, None, 2, 1, "mul")  # noqa: E731
    with DdfCalls() as calls:
        got = torch.vmap(jvp)(tangents)
    assert calls.count == 1  # the per-sample fallback would make 5
    torch.testing.assert_close(got, torch.stack([jvp(t) for t in tangents]), **TOL)


class DdfCalls(TorchDispatchMode):
    """Counts the ddf::ddf calls that reach the kernels."""

    count = 0

    def __torch_dispatch__(self, op, types, args=(), kwargs=None):
        self.count += op is torch.ops.ddf.ddf.default
        return op(*args, **(kwargs or {}))
