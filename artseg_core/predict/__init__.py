"""Prediction: the model object (:class:`~artseg_core.predict.model.ArtifactModel`) and file prediction."""
