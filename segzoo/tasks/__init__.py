"""segzoo.tasks: thin LightningModules; the net, loss, inferer, metric, optimizer and scheduler are injected."""

from segzoo.tasks.callbacks import RunArtifacts, RunCheckpoint
from segzoo.tasks.segmentation import SegmentationTask

__all__ = ["RunArtifacts", "RunCheckpoint", "SegmentationTask"]
