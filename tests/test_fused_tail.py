"""The fused BN + SE/ECA + add + ReLU tail (attn_zoo.fused.bn_se_tail) equals the plain block.

Every check builds a reference block and a copy of it that only switches ``fused_tail`` on, runs
both on the same input and output gradient, and compares outputs, input gradients, every parameter
gradient and the BatchNorm buffers.
"""
import copy

import pytest
import torch
from torch import nn

import attn_zoo
from attn_zoo import create_attention
from attn_zoo.backbones.blocks import BasicBlock, Bottleneck, conv1x1
from attn_zoo.backbones.placement import Attention
from attn_zoo.profile import count_attention_params

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


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("attention", ["se", "eca"])
def test_fused_block_equals_reference(attention, kind, training, channels_last, batch):
    reference, fused = block_pair(kind, attention)
    x = block_input(kind, batch, channels_last)
    _, out = assert_blocks_agree(reference, fused, x, training)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    if training:
        assert int(fused.last_bn().num_batches_tracked) == 4


@pytest.mark.parametrize("kind", list(SHAPES))
def test_float64_agrees_to_rounding_so_the_formulas_are_the_same(kind):
    reference, fused = (block.double() for block in block_pair(kind, "se"))
    assert_blocks_agree(reference, fused, block_input(kind, 3, True).double(), training=True, tolerance=1e-12)


def test_two_training_steps_with_cumulative_average_momentum():
    reference, fused = block_pair("bottleneck", "se", momentum=None)
    for _ in range(2):
        assert_blocks_agree(reference, fused, block_input("bottleneck", 2, False), training=True)
    assert int(fused.last_bn().num_batches_tracked) == 5


def test_batch_statistics_in_eval_without_running_stats():
    reference, fused = block_pair("basic", "se")
    for block in (reference, fused):
        block.bn2.track_running_stats = False
        block.bn2.running_mean = block.bn2.running_var = block.bn2.num_batches_tracked = None
    assert_blocks_agree(reference, fused, block_input("basic", 2, False), training=False)


def test_no_grad_forward_equals_reference():
    reference, fused = block_pair("bottleneck", "eca")
    x = block_input("bottleneck", 3, True)
    for training in (True, False):
        reference.train(training)
        fused.train(training)
        with torch.no_grad():
            assert_close(fused(x), reference(x), TIGHT)
    assert_close(fused.bn3.running_var, reference.bn3.running_var, TIGHT)


def test_one_value_per_channel_in_training_fails_as_batchnorm_does():
    _, fused = block_pair("bottleneck", "se")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(torch.randn(1, 16, 1, 1))


def test_bf16_autocast_runs_and_is_close():
    reference, fused = block_pair("bottleneck", "se")
    x = block_input("bottleneck", 3, True)
    out_ref, out_fused = assert_blocks_agree(
        reference, fused, x, training=True, autocast=True, tolerance=0.05
    )
    assert out_fused.dtype == torch.bfloat16


def resnet50(fused: bool, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    options = {"stem": "cifar", "fused_tail": fused}
    return attn_zoo.create_model("resnet50", "se", 10, backbone_options=options).to(dtype)


def train_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    logits = model(x.to(next(model.parameters()).dtype))
    nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    return logits.detach().double()


def largest_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


def gradient_errors(model: nn.Module, truth: nn.Module) -> dict[str, float]:
    return {
        name: largest_relative_error(p.grad, p_true.grad)
        for (name, p), p_true in zip(model.named_parameters(), truth.parameters())
    }


def test_whole_resnet50_gives_the_same_logits_gradients_and_statistics():
    """In float64 the fused and plain networks agree to rounding, so they compute the same function.

    In float32 a 50-layer network's gradients at batch 2 amplify rounding: the plain network's own
    float32 gradients differ from its float64 ones by several percent (sums in another order do
    that), so the float32 check holds the fused network to the plain network's own float32 error.
    """
    x = torch.randn(2, 3, 32, 32)
    reference, fused = resnet50(False, torch.float64), resnet50(True, torch.float64)
    fused.load_state_dict(reference.state_dict())
    assert list(fused.state_dict()) == list(reference.state_dict())
    assert count_attention_params(fused) == count_attention_params(reference) > 0
    assert all(block.fused_tail for stage in fused.stages for block in stage)
    assert largest_relative_error(train_step(fused, x), train_step(reference, x)) < 1e-10
    assert max(gradient_errors(fused, reference).values()) < 1e-10
    for (name, b_ref), b_fused in zip(reference.named_buffers(), fused.buffers()):
        assert largest_relative_error(b_fused, b_ref) < 1e-10, name

    reference32, fused32 = resnet50(False, torch.float32), resnet50(True, torch.float32)
    fused32.load_state_dict(reference32.state_dict())
    logits = train_step(reference32, x)
    assert largest_relative_error(train_step(fused32, x), logits) < 1e-4
    plain_error = gradient_errors(reference32, reference)
    for name, error in gradient_errors(fused32, reference).items():
        assert error <= 4 * max(plain_error.values()) + 1e-6, name


@pytest.mark.parametrize("backbone", ["resnet20", "resnet18"])
def test_cifar_and_basic_backbones_take_the_option(backbone):
    model = attn_zoo.create_model(backbone, "eca", backbone_options={"fused_tail": True})
    assert all(block.fused_tail for stage in model.stages for block in stage)
    assert not any(
        block.fused_tail for stage in attn_zoo.create_model(backbone, "eca").stages for block in stage
    )


@pytest.mark.parametrize("attention, options", [
    ("cbam", {}), ("se", {"placement": "post"}), ("se", {"placement": "pre"}), ("sk", {}),
])
def test_unsupported_attention_or_placement_fails_at_build_time(attention, options):
    with pytest.raises(ValueError, match=r"^fused_tail supports attention se .* got attention") as error:
        attn_zoo.create_model("resnet20", attention, backbone_options={"fused_tail": True, **options})
    assert "\n" not in str(error.value)


def test_squeeze_excite_variants_outside_the_fused_set_fail():
    with pytest.raises(ValueError, match="fused_tail supports"):
        attn_zoo.create_model("resnet20", "se", squeeze="max", backbone_options={"fused_tail": True})
    with pytest.raises(ValueError, match="fused_tail supports"):
        attn_zoo.create_model("resnet20", "se", gate="hardsigmoid", backbone_options={"fused_tail": True})


def test_no_attention_keeps_the_plain_tail():
    model = attn_zoo.create_model("resnet20", "none", backbone_options={"fused_tail": True})
    assert not any(block.fused_tail for stage in model.stages for block in stage)


@pytest.mark.slow
def test_compiled_fused_block_equals_eager_reference():
    reference, fused = block_pair("bottleneck", "se")
    compiled = torch.compile(fused, fullgraph=True)
    x = block_input("bottleneck", 3, True)
    reference.train()
    compiled.train()
    out_ref, grad_x_ref, grad_out = run(reference, x, None)
    out_fused, grad_x_fused, _ = run(compiled, x, grad_out)
    assert_close(out_fused, out_ref, TIGHT)
    assert_close(grad_x_fused, grad_x_ref, TIGHT)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert_close(p_fused.grad, p_ref.grad, TIGHT)
    assert_close(fused.bn3.running_var, reference.bn3.running_var, TIGHT)


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.usefixtures("exact_float32")
class TestOnCuda:
    @pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
    @pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
    @pytest.mark.parametrize("kind", list(SHAPES))
    @pytest.mark.parametrize("attention", ["se", "eca"])
    def test_fused_block_equals_reference(self, attention, kind, training, channels_last):
        reference, fused = (block.cuda() for block in block_pair(kind, attention))
        x = block_input(kind, 3, channels_last, device="cuda")
        assert_blocks_agree(reference, fused, x, training, tolerance=1e-4)

    def test_bf16_autocast_is_close(self):
        reference, fused = (block.cuda() for block in block_pair("bottleneck", "se"))
        x = block_input("bottleneck", 3, True, device="cuda")
        assert_blocks_agree(reference, fused, x, True, autocast=True, tolerance=0.05)


def test_sync_batchnorm_is_refused_rather_than_silently_local():
    _, fused = block_pair("basic", "se")
    fused.bn2 = nn.SyncBatchNorm.convert_sync_batchnorm(fused.bn2)
    with pytest.raises(ValueError, match="sync_batchnorm"):
        fused(block_input("basic", 2, False))
