"""Demo part (b): parameters and FLOPs at 224x224, ours next to the paper's.

The paper (Zhou et al., CVPR 2021, Table 1) counted multiply-accumulates with thop and called
them FLOPs; FlopCounterMode counts 2 FLOPs per multiply-accumulate, so our GFLOPs are halved
(GMACs) for the comparison. What remains differs for two small reasons:

- thop also counts batch norm (2 per element: +0.022G for the ResNet-50s, +0.032G for the
  ResNet-101s), which FlopCounterMode skips. This is why DDF-ResNet-101 shows 4.04 here
  against the paper's 4.1 (4.04 + 0.03 = 4.07);
- thop does not see the ddf op (a custom autograd Function in the official code), which our
  formula counts (3 FLOPs per tap per output element, see ``ddf_ops.flops``): 0.037 GFLOPs
  in DDF-ResNet-50. Nearly all of a DDF-ResNet's cost is its 1x1 convs.

Parameters need no such care: ours round to the paper's numbers.
"""

import torch

from ..models import count_flops, count_parameters, ddf_resnet50, ddf_resnet101, resnet50, resnet101

# The paper rounds to 0.1G (0.05) and thop adds batch norm (up to 0.03G here).
GMACS_TOLERANCE = 0.1

# name -> (factory, paper params in M, paper GMACs at 224x224). The ResNet rows are the
# paper's baselines (torchvision's models).
PAPER = {
    "ResNet-50": (resnet50, 25.6, 4.1),
    "DDF-ResNet-50": (ddf_resnet50, 16.8, 2.3),
    "ResNet-101": (resnet101, 44.5, 7.8),
    "DDF-ResNet-101": (ddf_resnet101, 28.1, 4.1),
}


def print_table() -> bool:
    """Prints the table; True when the parameters round to the paper's and the GMACs are
    within ``GMACS_TOLERANCE`` of its numbers."""
    print("   model            params (M)         GFLOPs @224  GMACs (= GFLOPs/2)")
    print("                    ours        paper  ours         ours    paper (thop)")
    ok = True
    for name, (build, paper_params, paper_gmacs) in PAPER.items():
        with torch.device("meta"):  # shapes only: no memory, no initialization time
            params = count_parameters(build()) / 1e6
        gflops = count_flops(build, 224) / 1e9
        ok &= round(params, 1) == paper_params and abs(gflops / 2 - paper_gmacs) <= GMACS_TOLERANCE
        counts = f"{params:9.4f}  {paper_params:5.1f}   {gflops:7.3f}      {gflops / 2:6.3f}  {paper_gmacs:4.1f}"
        print(f"   {name:15s}  {counts}")
    print("   (DDF rows: combine='mul'; 'add' has the same counts.) FlopCounterMode counts 2 FLOPs per")
    print("   multiply-accumulate and no batch norm; thop counted MACs, batch norm, and not the ddf op.")
    return ok
