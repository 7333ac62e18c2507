import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

# Without a GPU, Triton kernels run in Triton's interpreter (tests/test_triton_tail.py). It must be
# chosen before anything imports triton; torch alone does not. With a GPU they are compiled instead.
NO_GPU = not any(Path("/dev").glob("nvidia[0-9]*"))
if NO_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
