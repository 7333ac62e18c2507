"""The fused-tail checks shared by tests/test_fused_tail.py and tests/test_triton_tail.py: a plain
block and a copy that only switches ``fused_tail`` on, run on the same input and output gradient,
compared in outputs, input gradients, every parameter gradient and the BatchNorm buffers."""
import copy

import torch
from torch import nn

from attn_zoo import create_attention
from attn_zoo.backbones.blocks import BasicBlock, Bottleneck, conv1x1
from attn_zoo.backbones.placement import Attention

TIGHT = 1e-5  # relative to each tensor's largest entry: float32 sums in another order differ by ~1e-6 of it
# (block class, in_channels, planes, stride): both with a projection shortcut, BasicBlock strided
SHAPES = {"basic": (BasicBlock, 8, 16, 2), "bottleneck": (Bottleneck, 16, 8, 1)}


def randomise_batchnorms(module: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so eval mode is a real test."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                bn.num_batches_tracked.fill_(3)


def block_pair(kind: str, attention: str, **bn_options) -> tuple[nn.Module, nn.Module]:
    block_class, in_channels, planes, stride = SHAPES[kind]
    out = planes * block_class.expansion
    torch.manual_seed(0)
    shortcut = nn.Sequential(conv1x1(in_channels, out, stride), nn.BatchNorm2d(out))
    factory = Attention(attention, create_attention)
    reference = block_class(in_channels, planes, stride, shortcut, factory, "standard")
    randomise_batchnorms(reference)
    for bn in reference.modules():
        if isinstance(bn, nn.BatchNorm2d):
            for name, value in bn_options.items():
                setattr(bn, name, value)
    fused = copy.deepcopy(reference)
    fused.fused_tail = True
    return reference, fused


def block_input(kind: str, batch: int, channels_last: bool, device: str = "cpu") -> torch.Tensor:
    in_channels = SHAPES[kind][1]
    x = torch.randn(batch, in_channels, 7, 5, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def assert_close(actual, expected, tolerance, name=""):
    """``actual`` equals ``expected`` within ``tolerance`` times the largest entry of ``expected``."""
    scale = expected.detach().abs().max().clamp(min=1).item()
    torch.testing.assert_close(actual, expected, atol=tolerance * scale, rtol=tolerance, msg=lambda m: f"{name}: {m}")


def assert_close_in_norm(actual, expected, tolerance, name=""):
    """``‖actual − expected‖ ≤ tolerance · ‖expected‖``: for bf16 gradients, where a pre-activation
    within rounding of 0 can take the other side of a ReLU in either path, so a few single elements
    legitimately differ by their whole value while the gradient as a whole agrees."""
    error = (actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30)
    assert error <= tolerance, f"{name}: relative error {error:.3g} in norm > {tolerance}"


def run(block: nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None, autocast: bool = False):
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = block(x)
    grad_out = torch.randn_like(out, dtype=torch.float32) if grad_out is None else grad_out
    out.backward(grad_out.to(out.dtype))
    return out, x.grad, grad_out


def assert_blocks_agree(reference, fused, x, training: bool, tolerance=TIGHT, autocast: bool = False):
    reference.train(training)
    fused.train(training)
    out_ref, grad_x_ref, grad_out = run(reference, x, None, autocast)
    out_fused, grad_x_fused, _ = run(fused, x, grad_out, autocast)
    assert out_fused.dtype == out_ref.dtype
    assert_close(out_fused, out_ref, tolerance, "output")
    gradients_agree = assert_close_in_norm if autocast else assert_close
    gradients_agree(grad_x_fused, grad_x_ref, tolerance, "input gradient")
    for (name, p_ref), p_fused in zip(reference.named_parameters(), fused.parameters()):
        assert p_fused.grad is not None, name
        gradients_agree(p_fused.grad, p_ref.grad, tolerance, name)
    for (name, b_ref), b_fused in zip(reference.named_buffers(), fused.buffers()):
        assert_close(b_fused, b_ref, tolerance, name)
    return out_ref, out_fused
