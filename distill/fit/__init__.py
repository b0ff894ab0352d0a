"""The components ``distill.training.distil`` is assembled from, one concern a module, in the
layout of torchtitan's trainer: the fit (``distil``: set-up, then epochs) calls an epoch
(``epoch.EpochRunner`` → ``distill.passes.train_epoch``, whose steps run forward/backward)
and, between epochs, small components that each own one decision:

``state``       ``DistilState`` (what a checkpoint stores) and ``Checkpoints`` (resume,
                the per-epoch ``on_epoch_end`` hand-over)
``scores``      ``ScoreKeeper``: where the unit scores live and who re-scores them, chosen
                once at set-up (``score_keeper``): ``InMemoryScores`` or ``StreamedScores``
``validation``  ``Validator``: held-out agreement, the best snapshot, the final selection
``epoch``       ``EpochRunner`` (one epoch under its seeded RNG streams → its history record)
                and ``Calibration`` (BatchNorm statistics for the weights predictions use)

Nothing here knows about Ray or files (see ``distill.training``).
"""
