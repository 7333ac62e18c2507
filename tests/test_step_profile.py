"""``StepProfiler``: torch.profiler over a window of training steps, summarised per step."""
import lightning as L

from attn_zoo.callbacks import StepProfiler
from tests.lightning_toys import VALIDATION_PAUSE_S, SlowValidation, loader


def fit_with(profiler: StepProfiler, batches: int) -> None:
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[profiler])
    trainer.fit(SlowValidation(), loader(8 * batches), loader(8))


def test_the_window_starts_at_its_step_and_holds_its_steps(tmp_path):
    profiler = StepProfiler(tmp_path / "profile.txt", steps=3, start_step=2)
    fit_with(profiler, batches=8)
    text = (tmp_path / "profile.txt").read_text()
    assert text.startswith("profiled training steps: 3 of batch 8, ") and "no device timeline (CPU)" in text
    assert "aten::linear" in text or "aten::addmm" in text  # the operator table
    assert profiler.done and profiler.first_step == 2


def test_a_window_past_the_epoch_end_stops_before_validation(tmp_path):
    profiler = StepProfiler(tmp_path / "profile.txt", steps=10, start_step=2)
    fit_with(profiler, batches=4)  # steps 2 and 3 are left in the first epoch
    text = (tmp_path / "profile.txt").read_text()
    assert text.startswith("profiled training steps: 2 of batch 8, ")
    wall_ms_per_step = float(text.split(", ")[1].removesuffix(" ms per step"))
    assert wall_ms_per_step < 1000 * VALIDATION_PAUSE_S  # validation's pause is outside the window
