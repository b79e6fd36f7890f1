"""Shared pieces of the CPU and GPU benchmarks: shapes, the candidates, the tables."""

import dataclasses
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

import ddf_ops

# The 3x3 convolutions of ResNet-50's four stages: (channels, spatial size).
RESNET50_STAGES = [(64, 56), (128, 28), (256, 14), (512, 7)]


@dataclasses.dataclass
class Case:
    B: int
    C: int
    size: int
    k: int = 3
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    channels_last: bool = False

    @property
    def label(self) -> str:
        return f"{self.C}@{self.size}²" + (" channels_last" if self.channels_last else "") + (f" B={self.B}" if self.B != 8 else "")

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t


def ddf_inputs(case: Case, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    shapes = [(case.B, case.C, case.size, case.size), (case.B, case.C, case.k, case.k), (case.B, case.k**2, case.size, case.size)]
    return [
        case.layout(torch.randn(*s, generator=g).to(case.device, case.dtype)).requires_grad_(requires_grad)
        for s in shapes
    ]


def candidates(case: Case, requires_grad: bool, compile_mode=None) -> Dict[str, Callable[[], torch.Tensor]]:
    """name -> a closure returning the output; all with the same input."""
    x, cf, sf = ddf_inputs(case, requires_grad)
    g = torch.Generator().manual_seed(1)
    dw_weight = torch.randn(case.C, 1, case.k, case.k, generator=g).to(case.device, case.dtype)
    dense_weight = torch.randn(case.C, case.C, case.k, case.k, generator=g).to(case.device, case.dtype)
    dw_weight.requires_grad_(requires_grad)
    dense_weight.requires_grad_(requires_grad)
    pad = case.k // 2
    compiled_reference = torch.compile(ddf_ops.reference.ddf, mode=compile_mode, dynamic=False)
    return {
        "ddf (ours)": lambda: ddf_ops.ddf(x, cf, sf),
        "depthwise conv": lambda: F.conv2d(x, dw_weight, padding=pad, groups=case.C),
        "dense 3x3 conv": lambda: F.conv2d(x, dense_weight, padding=pad),
        "reference (eager)": lambda: ddf_ops.reference.ddf(x, cf, sf),
        "reference (Inductor)": lambda: compiled_reference(x, cf, sf),
    }


def leaves_of(out: torch.Tensor) -> List[torch.Tensor]:
    """The leaf tensors that out's autograd graph accumulates gradients into."""
    leaves, seen, todo = [], set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        todo.extend(n for n, _ in node.next_functions)
    return leaves


def forward_backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """A step that runs fn and back-propagates a fixed gradient through it. The gradients are
    returned (torch.autograd.grad), not accumulated into .grad: accumulating would add one
    read-add-write of every leaf per step to the time."""
    state = {}

    def step():
        out = fn()
        if "g" not in state:
            state["g"] = torch.randn_like(out)
            state["leaves"] = leaves_of(out)
        torch.autograd.grad(out, state["leaves"], state["g"])

    return step


def markdown_table(title: str, rows: List[List[str]], header: List[str]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
