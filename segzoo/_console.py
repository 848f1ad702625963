"""Console hygiene for the Lightning subcommands: nothing that segzoo's own defaults trigger reaches the user.

Each entry names what it silences and why it is not the user's concern; warnings about the user's own settings
(a bad ``--trainer`` value, a dataloader bottleneck) are left alone.
"""

from __future__ import annotations

import logging
import warnings

# Lightning 2.6 with torch >= 2.10: Lightning's own pytree helper uses a deprecated torch API on every fit
_LIBRARY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # `validate` / `test` under DDP: Lightning advises devices=1 so that no case is scored twice; segzoo's task gathers
    # the per-case rows over ranks and drops the repeats (tests/test_ddp.py), so the advice does not apply
    r"Using `DistributedSampler` with the dataloaders\. During `trainer\.(validate|test)\(\)`.*",
)


class _DropAdverts(logging.Filter):
    """Lightning's start-up tip recommending another product (shown whatever the logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


def quiet_defaults() -> None:
    """Install the filters (idempotent)."""
    for pattern in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in log.filters):
        log.addFilter(_DropAdverts())


def drop_unused_wandb_setting(trainer) -> None:
    """Lightning's ``WandbLogger`` always passes ``anonymous=None`` to ``wandb.init``, which wandb >= 0.19 answers with
    a deprecation warning; the setting has no effect there, so it is not passed."""
    for logger in trainer.loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", 0) is None:
            init.pop("anonymous")
