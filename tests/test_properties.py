"""Property test: every registered attention module, at its defaults, takes any small valid input
(channels 1..64, H and W 1..9, batch 1..3, float32 or bfloat16, training or eval mode; random,
constant or large values) without crashing, keeps the shape and returns only finite values."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attn_zoo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INPUTS = ("normal", "constant", "large", "tiny")


def _input(kind: str, shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=generator)
    values = {"normal": normal, "constant": torch.full(shape, 0.5), "large": normal * 1e3, "tiny": normal * 1e-6}[kind]
    return values.to(dtype)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(attn_zoo.list_attention()),
    channels=st.integers(1, 64),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    batch=st.integers(1, 3),
    dtype=st.sampled_from(sorted(DTYPES)),
    training=st.booleans(),
    kind=st.sampled_from(INPUTS),
    seed=st.integers(0, 2**16),
)
def test_any_valid_input_keeps_its_shape_and_stays_finite(name, channels, height, width, batch, dtype, training,
                                                          kind, seed):
    torch.manual_seed(seed)
    module = attn_zoo.create_attention(name, channels).to(DTYPES[dtype]).train(training)
    x = _input(kind, (batch, channels, height, width), DTYPES[dtype], seed)
    with torch.no_grad():
        y = module(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all(), f"{name}: non-finite output"
