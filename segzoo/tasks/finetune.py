"""Fine-tuning: start a run from a trained net's weights (``--model.init_from PATH``), whatever its label set.

Every weight whose name and shape match is copied into the freshly built net; the rest keep the constructor's
initialisation. With another number of classes that is exactly the output heads (their weights are ``(K, C, 1, ...)``
and ``K`` changed), so a 3-class KiTS19 net starts a 4-label run with everything but its heads. The source is read by
the safe loader (:func:`segzoo.checkpoint.load_checkpoint`: tensors and plain data, classes by allow-list, nothing
unpickled), from a ``segzoo fit`` checkpoint, a pretrained folder or ``hf-hub:ORG/NAME``.

``freeze_encoder_epochs``: the encoder (:func:`encoder_parameters`) is left untouched by the optimizer for the first
epochs, while the re-initialised heads and the decoder adapt (a common fine-tuning schedule; our choice of what
"encoder" means per net is below).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from segzoo.data.io import DataError

# Top-level submodules that are the encoder (the contracting path) of segzoo's nets: MSSUNet, CE-Net and MS-Dual
# ``encoder``, DR-Net ``enc1`` / ``enc`` / ``enc_res``, DenseASPP ``backbone``, the 2D U-Net ``down``. A net may name
# its own with a class attribute ``encoder_names``.
ENCODER_NAMES = ("encoder", "backbone", "enc1", "enc", "enc_res", "down")


@dataclass
class WeightTransfer:
    """What :func:`load_matching_weights` did: state-dict keys of the net that were loaded or kept their
    initialisation (with the reason), and keys of the source the net does not have."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and the first names of what was re-initialised and what was unexpected."""
        total = len(self.loaded) + len(self.reinitialised)
        line = f"init_from {self.source}: loaded {len(self.loaded)}/{total} tensors"
        if self.reinitialised:
            shown = ", ".join(f"{k} ({why})" for k, why in list(self.reinitialised.items())[:4])
            more = f" and {len(self.reinitialised) - 4} more" if len(self.reinitialised) > 4 else ""
            line += f"; re-initialised {len(self.reinitialised)}: {shown}{more}"
        else:
            line += "; re-initialised 0"
        if self.unexpected:
            more = f" and {len(self.unexpected) - 3} more" if len(self.unexpected) > 3 else ""
            line += f"; unexpected {len(self.unexpected)}: {', '.join(self.unexpected[:3])}{more}"
        else:
            line += "; unexpected 0"
        return line


def source_state_dict(source: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The net weights of a ``segzoo fit`` checkpoint, a pretrained folder or ``hf-hub:ORG/NAME[@REV]``, through
    the safe loader (:func:`segzoo.nets.from_pretrained`).

    Raises:
        segzoo.nets.pretrained.CheckpointError: (a ``DataError``) one line naming the file and the reason.
    """
    from segzoo.nets.pretrained import from_pretrained

    return from_pretrained(source, trust=trust).state_dict()


def load_matching_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str = "state") -> WeightTransfer:
    """Copy every tensor of ``state`` whose name and shape match one of ``net``'s into it (in place).

    Raises:
        DataError: not one tensor fits (another architecture altogether).
    """
    own = net.state_dict()
    report = WeightTransfer(str(source))
    matched = {}
    for key, value in own.items():
        theirs = state.get(key)
        if theirs is None:
            report.reinitialised[key] = "not in the source"
        elif tuple(theirs.shape) != tuple(value.shape):
            report.reinitialised[key] = f"{tuple(theirs.shape)} in the source, {tuple(value.shape)} here"
        else:
            matched[key] = theirs
            report.loaded.append(key)
    report.unexpected = [k for k in state if k not in own]
    if not matched:
        raise DataError(
            f"{source}: none of its {len(state)} tensors fits the net {type(net).__name__} by name and shape; "
            "expected weights of the same architecture (the number of classes may differ)"
        )
    with torch.no_grad():
        for key, value in matched.items():
            own[key].copy_(value)  # state_dict() tensors share storage with the net's parameters and buffers
    return report


def encoder_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``net``'s encoder: its top-level submodules named in ``net.encoder_names`` or
    :data:`ENCODER_NAMES`.

    Raises:
        ValueError: the net has none of them (name its encoder with a class attribute ``encoder_names``).
    """
    names = tuple(getattr(net, "encoder_names", ENCODER_NAMES))
    params = [p for name, child in net.named_children() if name in names for p in child.parameters()]
    if not params:
        children = [name for name, _ in net.named_children()]
        raise ValueError(
            f"freeze_encoder_epochs: {type(net).__name__} has no encoder submodule named {list(names)} (its "
            f"submodules: {children}); set a class attribute encoder_names on the net"
        )
    return params
