"""FX: symbolic_trace and make_fx(tracing_mode="symbolic") see one ddf node."""

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx

import ddf_ops
from conftest import make_inputs


class Block(torch.nn.Module):
    def forward(self, x, cf, sf):
        return ddf_ops.ddf(x, cf, sf, 2, 1, "mul")


def ddf_nodes(graph):
    return [n for n in graph.nodes if n.op == "call_function" and "ddf" in str(n.target)]


def test_symbolic_trace_sees_one_op_call():
    gm = torch.fx.symbolic_trace(Block())
    nodes = ddf_nodes(gm.graph)
    assert [n.target for n in nodes] == [torch.ops.ddf.ddf.default]
    args = make_inputs(2, 4, 9, 8, stride=2)
    torch.testing.assert_close(gm(*args), Block()(*args))


def test_make_fx_symbolic():
    args = make_inputs(2, 4, 9, 8, stride=2, requires_grad=True)

    def fwd_bwd(x, cf, sf):
        out = ddf_ops.ddf(x, cf, sf, 2)
        return torch.autograd.grad(out.sum(), (x, cf, sf))

    gm = make_fx(Block(), tracing_mode="symbolic")(*args)
    assert [n.target for n in ddf_nodes(gm.graph)] == [torch.ops.ddf.ddf.default]
    # Symbolic sizes: the traced graph runs at another size.
    other = make_inputs(3, 4, 11, 6, stride=2)
    torch.testing.assert_close(gm(*other), Block()(*other))

    gm = make_fx(fwd_bwd, tracing_mode="symbolic")(*args)
    targets = [n.target for n in ddf_nodes(gm.graph)]
    assert targets == [torch.ops.ddf.ddf.default, torch.ops.ddf.ddf_backward.default]
