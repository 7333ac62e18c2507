"""Checks shared by the attention test files: shapes, gradients, weight copies to and from timm."""
import torch
from torch import nn

# channels 1, 3, 8, 16, 64, each at batch 1 and 2; 1×1 maps; odd and non-square maps
SHAPES = [(2, 1, 5, 5), (2, 3, 6, 7), (2, 64, 4, 4), (2, 8, 1, 1), (1, 8, 5, 5), (1, 1, 1, 1), (1, 3, 1, 1),
          (2, 1, 7, 5), (1, 3, 7, 5), (2, 3, 1, 1), (2, 16, 8, 8), (1, 64, 5, 7), (2, 64, 1, 1), (2, 64, 7, 5)]
SHAPE_IDS = ["x".join(map(str, shape)) for shape in SHAPES]


def assert_shape_and_gradients(module: nn.Module, shape: tuple[int, ...]) -> None:
    """The shape contract: in training mode the same shape out, finite, and a gradient for the input
    and every parameter; in eval mode (running statistics) the same shape out, finite."""
    torch.manual_seed(0)
    module.train()
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape, f"training mode: {_shape(y)} out for {tuple(x.shape)} in"
    assert torch.isfinite(y).all(), "training mode: non-finite output"
    y.square().sum().backward()
    assert x.grad is not None, "the output does not depend on the input (no input gradient)"
    assert torch.isfinite(x.grad).all(), "non-finite input gradient"
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"parameter {name} gets no gradient (unused, or detached)"
        assert torch.isfinite(parameter.grad).all(), f"parameter {name}: non-finite gradient"
    module.eval()
    with torch.no_grad():
        y = module(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape, f"eval mode: {_shape(y)} out for {tuple(x.shape)} in"
    assert torch.isfinite(y).all(), "eval mode: non-finite output"


def _shape(output) -> str:
    return str(tuple(output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__


def assert_eval_acts_on_each_sample_alone(module: nn.Module, shape: tuple[int, ...] = (3, 16, 6, 5)) -> None:
    """Eval mode is how validation scores the network: there a module (with random parameters, see
    ``randomize``) must change its input, and each sample's output must depend on that sample alone
    (running statistics, never the batch's), as it would at batch 1."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    module.eval()
    with torch.no_grad():
        y = module(x)
        alone = torch.cat([module(x[index:index + 1]) for index in range(shape[0])])
    assert not torch.allclose(y, x), "in eval mode the module returns its input unchanged: validation scores the network without it"
    torch.testing.assert_close(alone, y, rtol=1e-4, atol=1e-5, msg=lambda detail: (
        f"in eval mode a sample's output depends on the other samples of the batch (a statistic over dim 0?): {detail}"))


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BN running statistics, so comparisons exercise every one of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.5)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return module


def copy_weights(source: nn.Module, target: nn.Module, key_map: dict[str, str]) -> None:
    """Load ``source``'s state into ``target``; ``key_map`` maps target key prefixes to source ones."""
    source_state = source.state_dict()
    state = {}
    for key in target.state_dict():
        source_key = key
        for target_prefix, source_prefix in key_map.items():
            if key.startswith(target_prefix):
                source_key = source_prefix + key[len(target_prefix):]
                break
        state[key] = source_state[source_key].reshape(target.state_dict()[key].shape)
    target.load_state_dict(state)
    assert len(state) == len(source_state), "the two modules hold different state"
