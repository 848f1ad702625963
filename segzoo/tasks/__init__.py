"""segzoo.tasks: thin LightningModules; the net, loss, inferer, metric, optimizer and scheduler are injected."""

from segzoo.tasks.callbacks import NiftiPredictionWriter, RunArtifacts, RunCheckpoint
from segzoo.tasks.segmentation import NonFiniteLossError, SegmentationTask
from segzoo.tasks.tracking import OverlayImages

__all__ = [
    "NiftiPredictionWriter",
    "NonFiniteLossError",
    "OverlayImages",
    "RunArtifacts",
    "RunCheckpoint",
    "SegmentationTask",
]
