"""Demo part (a): the compiled op against the pure-PyTorch reference, in float64."""

import torch

from .. import reference
from ..functional import ddf

# (B, C, H, W, k, heads, stride, dilation, combine): odd sizes, stride 2, heads, dilation, both combines.
CONFIGS = [
    (2, 8, 9, 11, 3, 1, 1, 1, "mul"),
    (2, 8, 9, 11, 3, 2, 2, 1, "add"),
    (1, 6, 13, 7, 5, 3, 2, 2, "mul"),
    (3, 4, 6, 6, 1, 4, 1, 1, "add"),
]
TOLERANCE = 1e-10


def _outputs_and_grads(fn, tensors, grad_out, stride, dilation, combine):
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = fn(*leaves, stride, dilation, combine)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return [out, *grads]


def check_op(device: torch.device) -> bool:
    """Prints the max abs error of the output and of the three gradients per configuration."""
    generator = torch.Generator().manual_seed(0)
    print("   B  C   H   W  k  G  s  d  combine   max|out err|  max|grad err|")
    ok = True
    for B, C, H, W, k, G, s, d, combine in CONFIGS:
        Ho, Wo = (H - 1) // s + 1, (W - 1) // s + 1
        shapes = [(B, C, H, W), (B, C, k, k), (B, G * k * k, Ho, Wo), (B, C, Ho, Wo)]
        x, cf, sf, grad_out = (
            torch.randn(shape, generator=generator, dtype=torch.float64).to(device) for shape in shapes
        )
        ours = _outputs_and_grads(ddf, (x, cf, sf), grad_out, s, d, combine)
        expected = _outputs_and_grads(reference.ddf, (x, cf, sf), grad_out, s, d, combine)
        errors = [(a - b).abs().max().item() for a, b in zip(ours, expected)]
        out_err, grad_err = errors[0], max(errors[1:])
        ok &= max(errors) < TOLERANCE
        config = f"{B:2d} {C:2d} {H:3d} {W:3d} {k:2d} {G:2d} {s:2d} {d:2d}  {combine:7s}"
        print(f"  {config}   {out_err:11.1e}   {grad_err:11.1e}")
    print(f"   {'all within' if ok else 'NOT all within'} {TOLERANCE:.0e} of the reference")
    return ok
