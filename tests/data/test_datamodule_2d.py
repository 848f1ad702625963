"""The 2D datamodules' per-case normalisation: constant channels z-score to finite values (CHAOS, BraTS)."""

import numpy as np
import pytest

from segzoo.data.datamodule_2d import zscore


@pytest.mark.parametrize("nonzero", [False, True], ids=["chaos", "brats"])
def test_zscore_constant_channels(nonzero):
    image = np.stack(
        [
            np.full((3, 4, 4), 300.0, np.float32),  # constant MR signal
            np.zeros((3, 4, 4), np.float32),  # an empty channel
            np.arange(48, dtype=np.float32).reshape(3, 4, 4),  # an ordinary one
        ]
    )
    out = zscore(image, nonzero=nonzero)
    assert np.isfinite(out).all()
    assert np.array_equal(out[0], np.zeros((3, 4, 4))) and np.array_equal(out[1], np.zeros((3, 4, 4)))
    values = image[2][image[2] != 0] if nonzero else image[2].ravel()
    expected = (image[2] - values.mean()) / values.std()
    if nonzero:
        expected[image[2] == 0] = 0
    np.testing.assert_allclose(out[2], expected, rtol=1e-5, atol=1e-6)
