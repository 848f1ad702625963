"""`segzoo predict` path: NiftiPredictionWriter writes one NIfTI per case on the input's own grid."""

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import pytest

from segzoo.data import KiTS19DataModule
from segzoo.data.synthetic import write_synthetic
from segzoo.inference.postprocess import KiTSPostprocess
from segzoo.inference.sliding_window import SlidingWindowTTAInferer
from segzoo.losses import CELoss
from segzoo.nets import create_net
from segzoo.tasks import NiftiPredictionWriter, SegmentationTask


@pytest.mark.slow
def test_predict_writes_niftis_with_input_geometry(tmp_path):
    data = tmp_path / "data"
    write_synthetic("kits19", data, cases=3, seed=0, unlabelled=1)
    dm = KiTS19DataModule(
        data_dir=str(data), target_spacing=(3.0, 4.0, 4.0), patch_size=(16, 32, 32), num_val_cases=1, num_workers=0
    )
    net = create_net("mss_unet3d_small", base_features=4, max_features=16)
    inferer = SlidingWindowTTAInferer(roi_size=(16, 32, 32), mirror_axes=None)
    task = SegmentationTask(net=net, loss=CELoss(), inferer=inferer, postprocess=KiTSPostprocess())
    out = tmp_path / "pred"
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[NiftiPredictionWriter(str(out))]
    )
    trainer.predict(task, datamodule=dm, return_predictions=False)
    cases = sorted(p.name for p in data.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in cases]  # unlabelled case included
    for c in cases:
        src = nib.load(data / c / "imaging.nii.gz")
        pred = nib.load(out / f"{c}.nii.gz")
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
        values = np.asarray(pred.dataobj)
        assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1, 2}
