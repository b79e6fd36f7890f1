"""Run by `make wheel-check` in a fresh venv where only the wheel (and the torch it requires)
is installed, from a directory outside the source tree: the installed package must give the
op, a module, torch.compile and torch.export without the checkout.

    python tools/wheel_smoke.py REPO_ROOT
"""

import os
import sys
import sysconfig

import torch

import ddf_ops
from ddf_ops.nn import DDFPack
from ddf_ops.reference import ddf as reference_ddf

repo = os.path.realpath(sys.argv[1])
where = os.path.realpath(ddf_ops.__file__)
site = os.path.realpath(sysconfig.get_paths()["platlib"])
# The venv may live inside the checkout (make wheel-check puts it under build/): what counts is
# that the package came from the venv's site-packages, not from the checkout's ddf_ops/.
assert where.startswith(site + os.sep), f"ddf_ops imported from {where}, not from the venv's {site}"
assert not where.startswith(os.path.join(repo, "ddf_ops") + os.sep), where
assert os.path.realpath(ddf_ops.library_path()).startswith(os.path.dirname(where)), ddf_ops.library_path()
info = ddf_ops.build_info()
assert info["torch"] is not None and info["torch"].split("+")[0] == torch.__version__.split("+")[0], info

g = torch.Generator().manual_seed(0)
x = torch.randn(2, 8, 9, 11, dtype=torch.float64, generator=g)
cf = torch.randn(2, 8, 3, 3, dtype=torch.float64, generator=g)
sf = torch.randn(2, 2 * 9, 5, 6, dtype=torch.float64, generator=g)
out = torch.ops.ddf.ddf(x, cf, sf, 2, 1, "mul")
torch.testing.assert_close(out, reference_ddf(x, cf, sf, 2, 1, "mul"), rtol=1e-12, atol=1e-12)

module = DDFPack(8, kernel_size=3, stride=1, head=2).eval()
inp = torch.randn(2, 8, 12, 12, generator=g)
with torch.no_grad():
    eager = module(inp)
    compiled = torch.compile(module, fullgraph=True)(inp)
    exported = torch.export.export(module, (inp,)).module()(inp)
torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(exported, eager, rtol=1e-6, atol=1e-6)
print(f"wheel smoke test: OK (ddf_ops {ddf_ops.__version__} from {os.path.dirname(where)}, built against {info})")
