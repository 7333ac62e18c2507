"""``backbone.fused_tail=triton``: the fused tail with its spatial reductions as Triton kernels.

The kernels run in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``), the same code a GPU
compiles; without it (and on tensors the kernels do not take) the custom ops use torch ops, checked
too. Everything is compared with float64 torch references and with the plain block.
"""
import copy
import os

import pytest
import torch
from torch import nn

import attn_zoo
from attn_zoo.fused import spatial_sums
from tests.helpers import relative_error
from tests.fused_checks import SHAPES, assert_bf16_as_accurate_as_plain, assert_blocks_agree, block_input, block_pair


INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"  # set by conftest.py before triton loads


@pytest.fixture(params=["interpreter", "torch_ops"])
def kernels(request, monkeypatch):
    """Run the Triton kernels in the interpreter, or the custom ops' torch fallback."""
    if request.param == "interpreter" and not INTERPRETER:
        pytest.skip("Triton's interpreter is chosen only on machines without a GPU (tests/conftest.py)")
    if request.param == "torch_ops":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


SIZES = [(3, 70, 7, 5), (2, 8, 33, 9), (1, 130, 1, 1), (2, 16, 40, 40)]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("size", SIZES, ids=["x".join(map(str, s)) for s in SIZES])
def test_spatial_moments_equal_float64_var_mean(kernels, size, channels_last):
    torch.manual_seed(0)
    y = torch.randn(size) * 3 + 20  # a mean well above the spread: no E[y²] − E[y]² cancellation allowed
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    mean, var = spatial_sums.spatial_moments(y)
    var_ref, mean_ref = torch.var_mean(y.double(), dim=(2, 3), correction=0)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == (size[0], size[1])
    torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(var.double(), var_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", SIZES, ids=["x".join(map(str, s)) for s in SIZES])
def test_relu_grad_sums_equal_float64_sums(kernels, size, dtype):
    torch.manual_seed(1)
    grad, out, y = (torch.randn(size).to(dtype).contiguous(memory_format=torch.channels_last) for _ in range(3))
    grad = grad.contiguous()  # the incoming gradient may come in another layout than the activations
    dz_sum, dzy_sum = spatial_sums.relu_grad_sums(grad, out, y)
    dz = torch.where(out > 0, grad, torch.zeros((), dtype=dtype)).double()
    torch.testing.assert_close(dz_sum.double(), dz.sum((2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dzy_sum.double(), (dz * y.double()).sum((2, 3)), rtol=1e-5, atol=1e-4)


def test_spatial_moments_backward_equals_var_mean_backward(kernels):
    torch.manual_seed(2)
    y = torch.randn(2, 24, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad_mean, grad_var = torch.randn(2, 24), torch.randn(2, 24)
    mean, var = spatial_sums.spatial_moments(y)
    (grad,) = torch.autograd.grad((mean, var), y, (grad_mean, grad_var))
    var_ref, mean_ref = torch.var_mean(y, dim=(2, 3), correction=0)
    (grad_ref,) = torch.autograd.grad((mean_ref, var_ref), y, (grad_mean, grad_var))
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def triton_pair(kind: str, attention: str):
    reference, fused = block_pair(kind, attention)
    fused.tail_kernels = "triton"
    return reference, fused


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("attention", ["se", "eca"])
def test_triton_block_equals_reference(kernels, attention, kind, training, channels_last):
    reference, fused = triton_pair(kind, attention)
    assert_blocks_agree(reference, fused, block_input(kind, 3, channels_last), training, tolerance=2e-5)


def test_float64_keeps_torch_ops_and_agrees_to_rounding(kernels):
    reference, fused = (block.double() for block in triton_pair("bottleneck", "se"))
    assert not spatial_sums.uses_kernels(torch.zeros(1, dtype=torch.float64))
    assert_blocks_agree(reference, fused, block_input("bottleneck", 3, True).double(), training=True, tolerance=1e-12)


def test_bf16_autocast_is_as_accurate_as_the_plain_block(kernels):
    assert_bf16_as_accurate_as_plain(lambda: triton_pair("bottleneck", "se"))


def test_compiled_triton_block_is_one_graph_and_equals_the_reference():
    reference, fused = triton_pair("bottleneck", "se")
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)  # fullgraph: the custom ops and the Function trace whole
    assert_blocks_agree(reference, compiled, block_input("bottleneck", 3, True), training=True, tolerance=2e-5)


def test_backbone_option_builds_triton_tails_and_rejects_other_values():
    model = attn_zoo.create_model("resnet20", "se", backbone_options={"fused_tail": "triton"})
    tails = [block.tail_kernels for block in model.modules() if getattr(block, "fused_tail", False)]
    assert len(tails) == 9 and set(tails) == {"triton"}
    with pytest.raises(ValueError, match="fused_tail must be false, true or triton; got 'cuda'"):
        attn_zoo.create_model("resnet20", "se", backbone_options={"fused_tail": "cuda"})


def test_whole_resnet_trains_a_step_like_the_plain_one(kernels):
    """Every parameter's gradient as accurate as the plain network's float32 one, both measured against
    the plain network in float64 (a fixed float32 bound would depend on the CPU's rounding)."""
    torch.manual_seed(0)
    plain = attn_zoo.create_model("resnet20", "eca", num_classes=10)
    fused = attn_zoo.create_model("resnet20", "eca", num_classes=10, backbone_options={"fused_tail": "triton"})
    fused.load_state_dict(plain.state_dict())
    truth = copy.deepcopy(plain).double()
    generator = torch.Generator().manual_seed(1)
    x, labels = torch.randn(4, 3, 16, 16, generator=generator), torch.tensor([1, 2, 3, 4])  # small: the interpreter is slow
    for model in (plain, fused, truth):
        nn.functional.cross_entropy(model(x.to(next(model.parameters()).dtype)), labels).backward()
    for (name, p_plain), p_fused, p_true in zip(plain.named_parameters(), fused.parameters(), truth.parameters()):
        plain_error = relative_error(p_plain.grad, p_true.grad)
        assert relative_error(p_fused.grad, p_true.grad) <= 4 * plain_error + 1e-5, name


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.usefixtures("exact_float32")
class TestOnCuda:
    @pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
    @pytest.mark.parametrize("kind", list(SHAPES))
    @pytest.mark.parametrize("attention", ["se", "eca"])
    def test_triton_block_equals_reference(self, attention, kind, training):
        reference, fused = (block.cuda() for block in triton_pair(kind, attention))
        assert_blocks_agree(reference, fused, block_input(kind, 3, True, device="cuda"), training, tolerance=1e-4)

    def test_moments_of_a_large_map(self):
        y = (torch.randn(64, 256, 56, 56, device="cuda") + 3).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        mean, var = spatial_sums.spatial_moments(y)
        var_ref, mean_ref = torch.var_mean(y.double(), dim=(2, 3), correction=0)
        torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(var.double(), var_ref, rtol=1e-4, atol=1e-5)
