"""Training: the weak-supervision pipeline (:func:`~artseg_core.training.pipeline.train`), its loops,
augmentation, checkpoints."""
