"""Early stopping stops after exactly `patience` epochs without improvement."""

from __future__ import annotations

from raymc.early_stopping import EarlyStopping


def run(values: list[float], **kwargs) -> tuple[EarlyStopping, int]:
    """Feed epochs until the stopper says stop; return it and the last epoch run."""
    stopper = EarlyStopping(**kwargs)
    for epoch, value in enumerate(values, start=1):
        stopper.update({kwargs["monitor"]: value}, epoch)
        if stopper.should_stop:
            return stopper, epoch
    return stopper, len(values)


def test_stops_after_exactly_patience_bad_epochs():
    stopper, last = run([0.5, 0.6, 0.55, 0.58, 0.59, 0.9], monitor="val_acc", patience=3)
    assert last == 5  # epochs 3, 4, 5 did not beat 0.6
    assert stopper.best == 0.6 and stopper.best_epoch == 2


def test_min_delta_ignores_tiny_gains():
    stopper, last = run([0.5, 0.505, 0.509, 0.6], monitor="val_acc", patience=2, min_delta=0.01)
    assert last == 3 and stopper.best_epoch == 1


def test_loss_is_minimised():
    stopper, last = run([1.0, 0.8, 0.9, 0.7], monitor="val_loss", patience=2)
    assert last == 4 and stopper.best == 0.7 and stopper.best_epoch == 4


def test_without_patience_it_never_stops_but_tracks_the_best():
    stopper, last = run([0.3, 0.2, 0.1, 0.1], monitor="val_acc")
    assert last == 4 and not stopper.should_stop and stopper.best_epoch == 1


def test_nan_never_improves_and_state_round_trips():
    stopper, _ = run([0.4, float("nan")], monitor="val_acc", patience=5)
    assert stopper.best == 0.4 and stopper.bad_epochs == 1
    assert EarlyStopping(**stopper.state_dict()) == stopper
