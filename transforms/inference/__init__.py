"""Model inference on the stream: the SavedModel handler, its versioned store, live scoring.

Usage::

    from transforms.inference import SavedModelHandler, ScoreEvents

    handler = SavedModelHandler("gs://bucket/models/fraud", schema=schema)
    scored = rows | ScoreEvents(handler)
    predictions, alerts = scored.predictions, scored.alerts
"""

from transforms.inference.model_handler import SavedModelHandler, Verdicts
from transforms.inference.model_store import ModelInfo, ModelStoreError, latest_version
from transforms.inference.scoring import Prediction, ScoreEvents, ScoringResult

__all__ = [
    "ModelInfo",
    "ModelStoreError",
    "Prediction",
    "SavedModelHandler",
    "ScoreEvents",
    "ScoringResult",
    "Verdicts",
    "latest_version",
]
