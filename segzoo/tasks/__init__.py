"""segzoo.tasks: thin LightningModules; the net, loss, inferer, metric, optimizer and scheduler are injected."""

from segzoo.tasks.callbacks import LRFloorStop, MovingAverage, NiftiPredictionWriter, RunArtifacts, RunCheckpoint
from segzoo.tasks.segmentation import NonFiniteLossError, SegmentationTask
from segzoo.tasks.tracking import OverlayImages

__all__ = [
    "LRFloorStop",
    "MovingAverage",
    "NiftiPredictionWriter",
    "NonFiniteLossError",
    "OverlayImages",
    "RunArtifacts",
    "RunCheckpoint",
    "SegmentationTask",
]
