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
from attn_zoo.fused.bn_se_tail import bn_se_add_relu
from attn_zoo.cost import count_attention_params
from tests.fused_checks import (
    SHAPES, TIGHT, assert_bf16_as_accurate_as_plain, assert_blocks_agree, assert_close, block_input, block_pair, run,
)
from tests.helpers import relative_error

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


def test_bf16_autocast_runs_and_is_as_accurate_as_the_plain_block():
    assert_bf16_as_accurate_as_plain(lambda: block_pair("bottleneck", "se"))


def resnet50(fused: bool, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    options = {"stem": "cifar", "fused_tail": fused}
    return attn_zoo.create_model("resnet50", "se", 10, backbone_options=options).to(dtype)


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model.train()
    logits = model(x.to(next(model.parameters()).dtype))
    nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach().double()


def all_gradients(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_whole_resnet50_gives_the_same_logits_gradients_and_statistics():
    """In float64 the fused and plain networks agree to rounding, so they compute the same function.

    That is the exact check, and it holds on any CPU. In float32 a randomly initialised 50-layer
    network's gradients are chaotic: activations within rounding of a ReLU's kink take either side,
    so the plain network's own float32 gradients differ from float64 by 0.03-0.8 % in norm (seeds
    0-9 here), and a fixed bound on one parameter's largest element fails on some CPUs. So float32 is
    held to the plain network's own float32 error over all gradients, with room for that chaos
    (fused/plain ratio 0.95-3.6 over seeds 0-9): a gross error in the fused backward would be
    100 % off. Float32 precision proper is checked on single blocks, where it is well conditioned.
    """
    generator = torch.Generator().manual_seed(0)
    x, labels = torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([3, 7, 0, 9])
    reference, fused = resnet50(False, torch.float64), resnet50(True, torch.float64)
    fused.load_state_dict(reference.state_dict())
    assert list(fused.state_dict()) == list(reference.state_dict())
    assert count_attention_params(fused) == count_attention_params(reference) > 0
    assert all(block.fused_tail for stage in fused.stages for block in stage)
    truth = train_step(reference, x, labels)
    assert relative_error(train_step(fused, x, labels), truth) < 1e-12
    for (name, p_ref), p_fused in zip(reference.named_parameters(), fused.parameters()):
        assert relative_error(p_fused.grad, p_ref.grad) < 1e-9, name
    for (name, b_ref), b_fused in zip(reference.named_buffers(), fused.buffers()):
        assert relative_error(b_fused, b_ref) < 1e-12, name

    reference32, fused32 = resnet50(False, torch.float32), resnet50(True, torch.float32)
    fused32.load_state_dict(reference32.state_dict())
    plain_logit_error = relative_error(train_step(reference32, x, labels), truth)
    assert relative_error(train_step(fused32, x, labels), truth) <= 10 * plain_logit_error + 1e-6
    plain_error = relative_error(all_gradients(reference32), all_gradients(reference))
    assert relative_error(all_gradients(fused32), all_gradients(reference)) <= 8 * plain_error + 1e-6


def test_float32_tail_is_as_accurate_as_the_plain_tail_for_activations_far_from_zero():
    """BatchNorm statistics of activations whose mean is 30 times their spread: a one-pass variance
    (E[y²] − E[y]²) loses about three digits to cancellation there. Both float32 paths are held
    against float64 and the fused one may not be much worse than the plain one."""
    reference, _ = block_pair("bottleneck", "se")
    generator = torch.Generator().manual_seed(3)
    y = (30 + torch.randn(8, 32, 7, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    identity = torch.randn(8, 32, 7, 5, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(8, 32, 7, 5, generator=generator, dtype=torch.float64)

    def tail(dtype: torch.dtype, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        bn, attention = (copy.deepcopy(module).to(dtype).train() for module in (reference.bn3, reference.attention))
        y_in = y.detach().to(dtype).requires_grad_()
        out = bn_se_add_relu(y_in, identity.to(dtype), bn, attention) if fused else torch.relu(
            attention(bn(y_in)) + identity.to(dtype))
        out.backward(grad_out.to(dtype))
        return out, y_in.grad

    truth = tail(torch.float64, fused=False)
    assert relative_error(tail(torch.float64, fused=True)[0], truth[0]) < 1e-12
    plain, fused = tail(torch.float32, fused=False), tail(torch.float32, fused=True)
    for name, fused_value, plain_value, true_value in zip(("output", "input gradient"), fused, plain, truth):
        plain_error, fused_error = relative_error(plain_value, true_value), relative_error(fused_value, true_value)
        assert fused_error <= 4 * plain_error + 1e-6, (name, fused_error, plain_error)


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
    # inductor splits BatchNorm into elementwise steps and vectorises for the machine (AVX-512 or AVX2):
    # float32 sums in another order, ~1e-5 of the largest entry on some CPUs; a wrong kernel is far off
    tolerance = 1e-4
    reference, fused = block_pair("bottleneck", "se")
    compiled = torch.compile(fused, fullgraph=True)
    x = block_input("bottleneck", 3, True)
    reference.train()
    compiled.train()
    out_ref, grad_x_ref, grad_out = run(reference, x, None)
    out_fused, grad_x_fused, _ = run(compiled, x, grad_out)
    assert_close(out_fused, out_ref, tolerance)
    assert_close(grad_x_fused, grad_x_ref, tolerance)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert_close(p_fused.grad, p_ref.grad, tolerance)
    assert_close(fused.bn3.running_var, reference.bn3.running_var, tolerance)


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

    def test_bf16_autocast_is_as_accurate_as_the_plain_block(self):
        assert_bf16_as_accurate_as_plain(lambda: tuple(block.cuda() for block in block_pair("bottleneck", "se")),
                                         device="cuda")


def test_sync_batchnorm_is_refused_rather_than_silently_local():
    _, fused = block_pair("basic", "se")
    fused.bn2 = nn.SyncBatchNorm.convert_sync_batchnorm(fused.bn2)
    with pytest.raises(ValueError, match="sync_batchnorm"):
        fused(block_input("basic", 2, False))
