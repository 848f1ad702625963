"""ClassWeightedDiceCELoss is MONAI's DiceCELoss with its class weights spelled as a list (for YAML recipes)."""

import pytest
import torch
from monai.losses import DiceCELoss

from segzoo.losses import ClassWeightedDiceCELoss


def test_equals_monai_with_a_weight_tensor():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 6, 8, 8))
    kwargs = {"to_onehot_y": True, "softmax": True, "batch": True}
    ours = ClassWeightedDiceCELoss(weight=[1.0, 1.0, 3.0], **kwargs)(logits, target)
    ref = DiceCELoss(weight=torch.tensor([1.0, 1.0, 3.0]), **kwargs)(logits, target)
    torch.testing.assert_close(ours, ref)
    plain = ClassWeightedDiceCELoss(**kwargs)(logits, target)
    torch.testing.assert_close(plain, DiceCELoss(**kwargs)(logits, target))
    assert not torch.allclose(ours, plain)  # the weights do change the loss


def test_weights_move_with_the_module_and_negative_ones_are_refused():
    loss = ClassWeightedDiceCELoss(weight=[1, 2, 3], to_onehot_y=True, softmax=True).to(torch.float64)
    assert loss.cross_entropy.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="must be >= 0"):
        ClassWeightedDiceCELoss(weight=[1.0, -1.0])
