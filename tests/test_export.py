"""torch.export with dynamic batch/H/W, decompositions, and save/load in a fresh process."""

import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from torch.export import Dim

import ddf_ops
from conftest import import_test_dependency, make_inputs

pytestmark = pytest.mark.integration  # torch.export, AOTInductor, not the kernels (test-fast leaves it out)

expecttest = import_test_dependency("expecttest")  # not on the GPU machine; CI has it


class DDFModule(torch.nn.Module):
    def __init__(self, stride=2, dilation=1, combine="mul"):
        super().__init__()
        self.stride, self.dilation, self.combine = stride, dilation, combine

    def forward(self, x, cf, sf):
        return ddf_ops.ddf(x, cf, sf, self.stride, self.dilation, self.combine)


def export_dynamic(module, args):
    # min=3: for H in {1, 2} a stride-2 output has size 1, which PyTorch's contiguity
    # reasoning treats specially (nn.Conv2d with stride 2 exports under the same bound).
    B, H, W = Dim("B"), Dim("H", min=3), Dim("W", min=3)
    auto = Dim.AUTO
    return torch.export.export(module, args, dynamic_shapes=({0: B, 2: H, 3: W}, {0: B}, {0: B, 2: auto, 3: auto}))


class TestExport(expecttest.TestCase):
    def test_graph_is_one_ddf_call(self):
        ep = export_dynamic(DDFModule(), make_inputs(2, 4, 9, 10, stride=2, dtype=torch.float32))
        self.assertExpectedInline(
            ep.graph_module.code.strip(),
            """\
def forward(self, x, cf, sf):
    ddf = torch.ops.ddf.ddf.default(x, cf, sf, 2);  x = cf = sf = None
    return (ddf,)""",
        )

    def test_dynamic_dims_and_decompositions_keep_the_op(self):
        ep = export_dynamic(DDFModule(combine="add"), make_inputs(2, 4, 9, 10, G=2, stride=2, dtype=torch.float32))
        decomposed = ep.run_decompositions()
        targets = [n.target for n in decomposed.graph.nodes if n.op == "call_function"]
        self.assertEqual(targets, [torch.ops.ddf.ddf.default])
        for B, H, W in [(1, 5, 7), (3, 12, 11)]:
            args = make_inputs(B, 4, H, W, G=2, stride=2, dtype=torch.float32, seed=B)
            torch.testing.assert_close(decomposed.module()(*args), ddf_ops.ddf(*args, 2, 1, "add"))

    def test_save_load_in_fresh_process(self):
        ep = export_dynamic(DDFModule(stride=2, dilation=2), make_inputs(2, 4, 9, 10, stride=2, dtype=torch.float32))
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/ddf.pt2"
            torch.export.save(ep, path)
            args = make_inputs(3, 4, 13, 8, stride=2, dtype=torch.float32, seed=7)
            torch.save(args, f"{tmp}/args.pt")
            expected = ddf_ops.ddf(*args, 2, 2)
            # The fresh process imports torch only: the library alone provides the op.
            script = textwrap.dedent(
                f"""
                import torch
                torch.ops.load_library({ddf_ops.library_path()!r})
                ep = torch.export.load({path!r})
                out = ep.module()(*torch.load({tmp + '/args.pt'!r}))
                torch.save(out, {tmp + '/out.pt'!r})
                """
            )
            subprocess.run([sys.executable, "-c", script], check=True)
            torch.testing.assert_close(torch.load(f"{tmp}/out.pt"), expected, rtol=0, atol=0)


def test_aot_inductor_package():
    """AOTInductor: the exported graph compiles to a package whose ddf call goes through
    the dispatcher to the library's kernel (dynamic batch)."""

    class Block(torch.nn.Module):
        def forward(self, x, cf, sf):
            return ddf_ops.ddf(x, cf, sf, 2, 1, "mul").relu()

    B = Dim("B")
    args = make_inputs(2, 4, 9, 10, stride=2, dtype=torch.float32)
    ep = torch.export.export(Block(), args, dynamic_shapes=({0: B}, {0: B}, {0: B}))
    with tempfile.TemporaryDirectory() as tmp:
        path = torch._inductor.aoti_compile_and_package(ep, package_path=f"{tmp}/block.pt2")
        runner = torch._inductor.aoti_load_package(path)
        other = make_inputs(3, 4, 9, 10, stride=2, dtype=torch.float32, seed=3)
        torch.testing.assert_close(runner(*other), Block()(*other))
