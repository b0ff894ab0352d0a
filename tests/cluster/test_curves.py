"""Training curves in the run's storage: each fit keeps its own event file."""

from cluster.store.storage import Storage
from cluster.training.curves import CurveLog, tensorboard_dir


def test_two_fits_in_one_second_keep_both_event_files(tmp_path):
    storage = Storage(str(tmp_path))
    for first_epoch in (1, 3):  # a fit, then its resume, well within one second
        log = CurveLog(storage, "run", "all")
        for epoch in (first_epoch, first_epoch + 1):
            log.epoch({"epoch": epoch, "loss": 1.0 / epoch})
        log.close()
    files = storage.listdir(tensorboard_dir("run", "all"))
    assert len(files) == 2, files
    assert all(name.startswith("events.out.tfevents.") for name in files)
