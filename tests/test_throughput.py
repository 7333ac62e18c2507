"""``TrainThroughput``: training images/s exclude validation; the epoch's wall time includes it."""
import lightning as L

from attn_zoo.throughput import TrainThroughput
from tests.lightning_toys import VALIDATION_PAUSE_S, SlowValidation, loader

def test_epoch_seconds_hold_validation_and_the_rate_does_not():
    throughput = TrainThroughput()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[throughput])
    trainer.fit(SlowValidation(), loader(32), loader(32))  # 4 training and 4 validation batches per epoch
    summary = throughput.summary()
    assert len(summary["epoch_seconds_by_epoch"]) == len(summary["train_images_per_s_by_epoch"]) == 2
    for seconds, rate in zip(summary["epoch_seconds_by_epoch"], summary["train_images_per_s_by_epoch"]):
        training_seconds = 32 / rate
        assert training_seconds < 4 * VALIDATION_PAUSE_S  # the rate's clock stopped before validation
        assert seconds >= training_seconds + 4 * VALIDATION_PAUSE_S
