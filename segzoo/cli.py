"""The ``segzoo`` command: LightningCLI (fit / validate / test / predict) plus plain subcommands.

Plain subcommands (``nets``, ``synth``, ``infer`` ...) are argparse programs registered in ``PLAIN_COMMANDS``; the
Lightning subcommands are a :class:`SegzooCLI`, the only place where net, task and data meet.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable, Sequence

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from segzoo.tasks import SegmentationTask

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class SegzooCLI(LightningCLI):
    """LightningCLI for :class:`SegmentationTask` with any ``LightningDataModule`` given by ``class_path``."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False})
        super().__init__(SegmentationTask, pl.LightningDataModule, subclass_mode_data=True, args=args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Put the loggers' files in the run folder (``save_dir`` defaults to ``trainer.default_root_dir``); read
        ``--ckpt_path`` with ``weights_only=True`` unless ``--weights_only false`` is given."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if "weights_only" in config and config.weights_only is None:
            # --ckpt_path is read as tensors and plain data (segzoo checkpoints are); `--weights_only false` unpickles
            config.weights_only = True
        root = config.trainer.get("default_root_dir") or "."
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args and init_args.save_dir in (None, ".", "./"):
                init_args.save_dir = root


# ------------------------------------------------------------------ plain commands
def _cmd_nets(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="segzoo nets", description="List the registered nets with parameter counts.")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'drnet*'")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    import segzoo
    from segzoo.nets import net_example_shape

    table = Table(title="segzoo nets")
    for col in ("name", "class", "in", "out", "params", "example input"):
        table.add_column(col, justify="right" if col in ("in", "out", "params") else "left")
    for name in segzoo.list_nets(args.pattern):
        net = segzoo.create_net(name)
        cfg = net.init_config["init_args"]
        params = sum(p.numel() for p in net.parameters())
        table.add_row(
            name,
            type(net).__name__,
            str(cfg.get("in_channels", "?")),
            str(cfg.get("out_channels", "?")),
            f"{params:,}",
            "x".join(map(str, net_example_shape(name))) or "-",
        )
    Console().print(table)
    return 0


def _cmd_synth(argv: Sequence[str]) -> int:
    from segzoo.data.synthetic import synthetic_datasets, write_synthetic

    p = argparse.ArgumentParser(
        prog="segzoo synth", description="Write a synthetic dataset in the real on-disk format of DATASET."
    )
    p.add_argument("dataset", choices=synthetic_datasets())
    p.add_argument("out_dir")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=("small", "large"), default="small", help="laptop-sized or real-sized cases")
    args = p.parse_args(argv)
    paths = write_synthetic(args.dataset, args.out_dir, cases=args.cases, seed=args.seed, size=args.size)
    print(f"wrote {len(paths)} {args.dataset} cases to {args.out_dir}")
    return 0


def _plain_commands() -> dict[str, tuple[Callable[[Sequence[str]], int], str]]:
    cmds: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
        "nets": (_cmd_nets, "list the registered nets with parameter counts"),
        "synth": (_cmd_synth, "write a synthetic dataset (kits19, chaos, brats) in its real on-disk format"),
    }
    try:
        from segzoo.inference.cli import INFERENCE_COMMANDS
    except ImportError:  # inference CLI not available
        INFERENCE_COMMANDS = {}
    cmds.update(INFERENCE_COMMANDS)
    from segzoo.tools_cli import TOOLS_COMMANDS

    cmds.update(TOOLS_COMMANDS)
    return cmds


def _print_help() -> None:
    print("usage: segzoo COMMAND [options]\n")
    print("Training and evaluation (LightningCLI; `segzoo fit --help`):")
    for c, d in zip(
        LIGHTNING_COMMANDS,
        ("train a model", "validate on the validation set", "test on the test set", "predict with a model"),
    ):
        print(f"  {c:<10} {d}")
    print("\nOther commands (`segzoo COMMAND --help`):")
    for c, (_, d) in _plain_commands().items():
        print(f"  {c:<10} {d}")
    print("\nExample: segzoo fit --config configs/kits19_demo.yaml --trainer.default_root_dir runs/demo")


def main(argv: Sequence[str] | None = None) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if from_sys:  # the process is ours: SEGZOO_CPU_ALLOCATOR=reuse opts in (segzoo.utils.cpu_allocator_from_env)
        from segzoo.utils import cpu_allocator_from_env

        cpu_allocator_from_env()
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        import segzoo

        print(f"segzoo {segzoo.__version__}")
        return 0
    plain = _plain_commands()
    if argv[0] in plain:
        return plain[argv[0]][0](argv[1:]) or 0
    if argv[0] not in LIGHTNING_COMMANDS:
        print(
            f"segzoo: error: unknown command '{argv[0]}'; expected one of {', '.join((*LIGHTNING_COMMANDS, *plain))}",
            file=sys.stderr,
        )
        return 2
    saved_argv = sys.argv
    if not from_sys:  # called from Python (demo, notebooks, tests): LightningCLI must not see the caller's argv
        sys.argv = saved_argv[:1]
    try:
        SegzooCLI(args=None if from_sys else argv)
    except Exception as e:
        from jsonargparse import ArgumentError

        from segzoo.data.io import DataError
        from segzoo.tasks.segmentation import NonFiniteLossError

        if isinstance(e, ArgumentError) or type(e).__name__ == "ArgumentError":
            print(f"segzoo {argv[0]}: error: {_one_line(str(e))}", file=sys.stderr)
            return 2
        if isinstance(e, pickle.UnpicklingError):  # --ckpt_path holds objects that only unpickling would rebuild
            from segzoo.checkpoint import unpickling_refusal

            print(
                f"segzoo {argv[0]}: error: {unpickling_refusal(_ckpt_path_arg(argv), e, '--weights_only false')}",
                file=sys.stderr,
            )
            return 2
        if isinstance(e, DataError | NonFiniteLossError):  # segzoo's own errors already name the culprit
            print(f"segzoo {argv[0]}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2 if isinstance(e, DataError) else 1
        raise
    finally:
        sys.argv = saved_argv
    return 0


def _ckpt_path_arg(argv: Sequence[str]) -> str:
    """The ``--ckpt_path`` value on the command line (for error messages)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
        if arg == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
    return "--ckpt_path"


def _one_line(message: str) -> str:
    """Collapse jsonargparse's nested error report into one line that keeps the key and the culprit."""
    skip = ("Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>", "Got value")
    parts = []
    for line in message.strip().splitlines():
        line = line.strip().lstrip("- ").strip()
        if not line or line.startswith(skip):
            continue
        line = line.split(" Got value:")[0]
        if "expects a function or a callable class: " in line:
            line = line.split("expects a function or a callable class: ")[1]
        parts.append(line.rstrip(":") if parts == [] else line)
    return ": ".join(parts) if parts else message


if __name__ == "__main__":
    sys.exit(main())
