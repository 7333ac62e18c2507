import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("WANDB_MODE", "disabled")
# one torch thread, as `make test` sets, also for a bare `pytest` (before anything imports torch): the
# bit-exact resume tests compare a run in this process with one in a subprocess, and on a many-core
# machine multi-threaded reductions would sum in another order in each
os.environ.setdefault("OMP_NUM_THREADS", "1")

# the shared checks' asserts show their values on failure, as a test file's do
pytest.register_assert_rewrite("attention_checks", "tests.fused_checks")

# Hypothesis draws its examples from a fixed seed, so `make test` is the same test on every run and a
# failure reproduces anywhere; HYPOTHESIS_PROFILE=explore draws new examples each run (to look for more)
settings.register_profile("seeded", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "seeded"))

# The plot tests measure labels in matplotlib's own style (font, sizes, dpi): a user's matplotlibrc
# (~/.config/matplotlib, $MPLCONFIGDIR, $MATPLOTLIBRC) moved them and failed those tests. The packaged
# file outranks those here and in every subprocess a test starts (only one in the working folder,
# the repository's root, would still come first).
os.environ["MATPLOTLIBRC"] = str(Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data" / "matplotlibrc")

# Without a GPU, Triton kernels run in Triton's interpreter (tests/test_triton_tail.py). It must be
# chosen before anything imports triton; torch alone does not. With a GPU they are compiled instead.
NO_GPU = not any(Path("/dev").glob("nvidia[0-9]*"))
if NO_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def exact_float32():
    """float32 matmuls and convolutions without TF32 for the test, so GPU checks can hold 1e-4."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(autouse=True)
def seeded_generators():
    """Every test starts from the same global random state, so the inputs it draws do not depend on
    which tests ran before it in the same process (pytest-xdist changes that order)."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying so, on a machine without CUDA: ``make test-gpu`` (``-m gpu``)
    then exits 0 there, and runs them all where CUDA is."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker gpu): none on this machine")
    for item in items:
        # the marker, not the keyword: a parameter id "gpu" (data.loader=gpu, the device-resident
        # loader that runs on the CPU too) is a keyword as well, and skipped those CPU tests
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """One completed run of ``helpers.TWO_EPOCHS`` per test file: the uninterrupted reference."""
    from tests.helpers import TWO_EPOCHS, completed_run

    return completed_run(tmp_path_factory, *TWO_EPOCHS)


@pytest.fixture
def two_epoch_copy(two_epoch_run, tmp_path):
    """A copy of ``two_epoch_run`` for a test to rerun, resume or break."""
    from tests.helpers import copy_run

    return copy_run(two_epoch_run, tmp_path)
