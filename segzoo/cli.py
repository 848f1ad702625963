"""The ``segzoo`` command: LightningCLI (fit / validate / test / predict) plus plain subcommands.

Plain subcommands (``nets``, ``synth``, ``recipes``, ``infer`` ...) are argparse programs registered in
``_plain_commands``; the Lightning subcommands are a :class:`SegzooCLI`, the only place where net, task and data meet.
Lightning is imported only for those four: ``segzoo --version``, ``--help``, ``recipes`` and ``nets`` start without
it (``benchmarks/startup.py`` times them).

Two spellings reach LightningCLI rewritten (:func:`expand_args`): ``--config NAME`` with a packaged recipe name
(:mod:`segzoo.recipes`) becomes the recipe's file(s), and ``--model.net NAME`` with a registered net name becomes
that variant's ``class_path`` / ``init_args``; both are announced on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# Values that must agree, taken from the datamodule where it declares them (a datamodule without the attribute keeps
# the config's value): the net's input channels and classes, and the sliding window = the training patch/image size.
LINKS = (
    ("data.in_channels", "model.net.init_args.in_channels"),
    ("data.num_classes", "model.net.init_args.out_channels"),
    ("data.patch_size", "model.inferer.init_args.roi_size"),
    ("data.image_size", "model.inferer.init_args.roi_size"),
)


def _build_cli_class() -> type:
    """:class:`SegzooCLI`, built on first use so that importing this module does not import Lightning."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from segzoo.tasks import SegmentationTask

    class SegzooCLI(LightningCLI):
        """LightningCLI for :class:`SegmentationTask` with any ``LightningDataModule`` given by ``class_path``.

        ``args`` given from Python go through :func:`expand_args` (recipe and registered-net names) like the
        command line's.
        """

        def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            kwargs.setdefault("auto_configure_optimizers", False)
            kwargs.setdefault("parser_kwargs", {"exit_on_error": False})
            if args is not None and not isinstance(args, dict):
                args = expand_args(list(args))
            super().__init__(SegmentationTask, pl.LightningDataModule, subclass_mode_data=True, args=args, **kwargs)

        def add_arguments_to_parser(self, parser) -> None:
            for source, target in LINKS:
                parser.link_arguments(source, target, apply_on="instantiate")

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            if "weights_only" in config and config.weights_only is None:
                # --ckpt_path is read as tensors and plain data (segzoo checkpoints are); `--weights_only false`
                # unpickles
                config.weights_only = True
            _loggers_in_run_folder(config)
            _progress_bar_switch(config)
            if config.model.get("inferer") is None:
                _drop_links(self._parser(self.subcommand), "model.inferer.")
            _planned_topology(config)

        def before_fit(self) -> None:
            _before_run(self)

        before_validate = before_test = before_predict = before_fit

    # pickle finds the class as `segzoo.cli.SegzooCLI` (the module's __getattr__): ddp_spawn pickles the trainer,
    # which reaches the CLI through the callbacks LightningCLI adds
    SegzooCLI.__module__ = __name__
    SegzooCLI.__qualname__ = "SegzooCLI"
    return SegzooCLI


_CLI_CLASS: type | None = None


def __getattr__(name: str):
    global _CLI_CLASS
    if name == "SegzooCLI":  # `from segzoo.cli import SegzooCLI` builds the class (and imports Lightning)
        if _CLI_CLASS is None:
            _CLI_CLASS = _build_cli_class()
        return _CLI_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _before_run(cli) -> None:
    from segzoo._console import drop_unused_wandb_setting

    drop_unused_wandb_setting(cli.trainer)
    for logger in cli.trainer.loggers:  # wandb warns "git root RUN does not exist" when its folder is not there yet
        save_dir = getattr(logger, "save_dir", None)
        if isinstance(save_dir, str | os.PathLike) and type(logger).__name__ == "WandbLogger":
            Path(save_dir).mkdir(parents=True, exist_ok=True)
    task, dm = cli.model, cli.datamodule
    labels = getattr(dm, "label_names", None)
    if labels and hasattr(getattr(task, "metric", None), "bind_labels"):
        task.metric.bind_labels(labels)  # a generic metric scores the dataset's own labels
    regions = getattr(dm, "regions", None)
    if regions:  # nnU-Net region labels: one sigmoid output per region, a region loss on the label maps
        from torch import nn

        from segzoo.data.io import DataError

        loss = getattr(task, "loss", None)
        binders = [m for m in loss.modules() if hasattr(m, "bind_regions")] if isinstance(loss, nn.Module) else []
        if not binders:
            raise DataError(
                f"{dm.data_dir}: region labels ({len(regions)} regions) train with a region loss on sigmoid outputs: "
                "use --config mss_unet3d_regions (segzoo.losses.RegionLoss)"
            )
        for module in binders:
            module.bind_regions(regions)
        if hasattr(getattr(task, "metric", None), "bind_regions"):
            task.metric.bind_regions(dict(zip(dm.source.regions, regions)))
    window = getattr(dm, "patch_size", None) or getattr(dm, "image_size", None)
    channels = getattr(dm, "in_channels", None)
    if cli.subcommand == "fit" and window and channels and getattr(task, "example_input_array", None) is None:
        import torch

        # the model summary then reports the net's real FLOPs and shapes for one training patch (else "FLOPs 0")
        task.example_input_array = torch.zeros(1, int(channels), *(int(s) for s in window))


def _planned_topology(config) -> None:
    """A generic 3D datamodule with ``plan_net`` gives an MSSUNet its planned ``kernel_size`` and ``strides``."""
    data, net = config.get("data"), config.model.get("net")
    if data is None or net is None or not str(data.get("class_path", "")).endswith(".PatchDataModule"):
        return
    if not str(net.get("class_path", "")).endswith("MSSUNet") or not data.init_args.get("plan_net", True):
        return
    from segzoo.data.datamodule import plan_for_config

    plan = plan_for_config(dict(data.init_args))
    net.init_args.kernel_size = plan["kernel_size"]
    net.init_args.strides = plan["strides"]
    _note(
        f"planned for {data.init_args.data_dir}: spacing {[round(s, 3) for s in plan['target_spacing']]} mm, patch "
        f"{plan['patch_size']}, kernel_size {plan['kernel_size']}, strides {plan['strides']} "
        "(--data.plan_net false keeps the net's own)"
    )


def _drop_links(parser, target_prefix: str) -> None:
    """Remove the links into a component the config leaves out (``model.inferer: null``).

    jsonargparse skips a link whose target is missing but still reports it as applied, and Lightning then writes the
    value into the task's saved hyper-parameters under the missing component, which fails.
    """
    group = getattr(parser, "_links_group", None)
    if group is not None:
        group._group_actions[:] = [a for a in group._group_actions if not a.target[0].startswith(target_prefix)]


def _loggers_in_run_folder(config) -> None:
    """Put the loggers' files in the run folder: ``save_dir`` defaults to ``trainer.default_root_dir``."""
    root = config.trainer.get("default_root_dir") or "."
    loggers = config.trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args and init_args.save_dir in (None, ".", "./"):
            init_args.save_dir = root


def _progress_bar_switch(config) -> None:
    """``--trainer.enable_progress_bar false`` also drops a progress-bar callback the recipe lists."""
    if config.trainer.get("enable_progress_bar") is not False:
        return
    callbacks = config.trainer.get("callbacks")
    if isinstance(callbacks, list):
        config.trainer.callbacks = [
            c for c in callbacks if not str(getattr(c, "class_path", "")).endswith("ProgressBar")
        ]


# ------------------------------------------------------------------ argument rewriting
def _note(message: str) -> None:
    print(f"segzoo: {message}", file=sys.stderr)


def expand_args(argv: list) -> list[str]:
    """Rewrite recipe names after ``--config`` and registered net names after ``--model.net`` (see module doc)."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value, step = *arg.split("=", 1), 1
        elif i + 1 < len(argv):
            key, value, step = arg, argv[i + 1], 2
        else:
            key, value, step = arg, None, 1
        if key in ("--config", "-c") and value is not None:
            out += _expand_config(value)
        elif key == "--model.net" and value is not None:
            out += ["--model.net", _expand_net(value)]
        else:
            out.append(arg)
            step = 1
        i += step
    return out


def _expand_config(value: str) -> list[str]:
    from segzoo.recipes import resolve_config_arg

    files = resolve_config_arg(value)
    if files is None:
        return ["--config", value]
    _note(f"recipe '{value}': {', '.join(files)} (relative paths in it are under {os.getcwd()})")
    return [x for f in files for x in ("--config", f)]


def _expand_net(value: str) -> str:
    if "." in value or value.lstrip().startswith("{"):  # a class path, or a class_path/init_args mapping
        return value
    from segzoo.nets import create_net, list_nets

    if value not in list_nets():
        return value  # a class name (DRNet): jsonargparse resolves it or names the problem
    config = create_net(value).init_config
    _note(f"--model.net {value}: the registered variant, {config['class_path']} with its arguments")
    return json.dumps(config)


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
    p.add_argument(
        "--form",
        choices=("nnunet", "msd", "datalist"),
        default="nnunet",
        help="nnunet only: the layout (nnU-Net v2 raw, Decathlon 4D, or nnU-Net files + a MONAI datalist.json)",
    )
    p.add_argument("--regions", action="store_true", help="nnunet only: nnU-Net region labels in dataset.json")
    p.add_argument("--test-cases", type=int, default=2, help="nnunet only: unlabelled cases in imagesTs")
    args = p.parse_args(argv)
    options = {"size": args.size}
    if args.dataset == "nnunet":
        options = {"form": args.form, "regions": args.regions, "test_cases": args.test_cases}
    elif args.form != "nnunet" or args.regions:
        p.error("--form / --regions apply to the nnunet dataset only")
    paths = write_synthetic(args.dataset, args.out_dir, cases=args.cases, seed=args.seed, **options)
    what = "files" if args.dataset == "nnunet" else "cases"
    print(f"wrote {len(paths)} {args.dataset} {what} to {args.out_dir}")
    return 0


def _cmd_recipes(argv: Sequence[str]) -> int:
    from segzoo import recipes

    p = argparse.ArgumentParser(
        prog="segzoo recipes",
        description="The packaged recipes (configs) for `segzoo fit --config NAME`: list, show or copy one to edit.",
        epilog="Examples: segzoo recipes | segzoo recipes show kits19_demo | segzoo recipes copy kits19 my_kits19.yaml",
    )
    sub = p.add_subparsers(dest="action")
    ls = sub.add_parser("list", help="list the recipe names (the default)")
    ls.add_argument("--fragments", action="store_true", help="also list the net fragments nets/<net>")
    show = sub.add_parser("show", help="print a recipe's YAML")
    show.add_argument("name")
    cp = sub.add_parser("copy", help="write a recipe to a file (a composed recipe merged into one) to edit")
    cp.add_argument("name")
    cp.add_argument("dest", nargs="?", default=".", help="file or folder (default: the working folder)")
    cp.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = p.parse_args(argv)
    try:
        if args.action == "show":
            print(recipes.recipe_text(args.name), end="")
        elif args.action == "copy":
            dest = recipes.copy_recipe(args.name, args.dest, force=args.force)
            print(f"wrote {dest}; run it with: segzoo fit --config {dest}")
        else:
            root = recipes.recipe_root()
            for name in recipes.list_recipes(include_fragments=getattr(args, "fragments", False)):
                files = " + ".join(f.relative_to(root).as_posix() for f in recipes.recipe_files(name))
                print(f"{name:<18} {files}")
            print(f"\n(in {root}; `segzoo fit --config NAME`, `segzoo recipes show NAME`, `segzoo recipes copy NAME`)")
    except (KeyError, FileExistsError) as e:
        print(f"segzoo recipes: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return 0


# name -> (module, function, description); modules are imported only to run their command, so `segzoo --help`
# stays light. tests/test_cli.py checks this table against segzoo.inference.cli and segzoo.tools_cli.
_PLAIN_ELSEWHERE = {
    "demo": ("segzoo.demo", "main", "the KiTS19 method end to end on synthetic data (= python -m segzoo.demo)"),
    "infer": ("segzoo.inference.cli", "cmd_infer", "predict NIfTI files / KiTS case folders with a checkpoint"),
    "show": ("segzoo.tools_cli", "cmd_show", "draw slices of a NIfTI case with label/prediction overlays to a PNG"),
    "curves": ("segzoo.tools_cli", "cmd_curves", "plot learning curves of a run's CSVLogger metrics.csv"),
    "verify": (
        "segzoo.dataset_cli",
        "cmd_verify",
        "check a dataset (nnU-Net raw, Decathlon, datalist, KiTS19, BraTS, CHAOS) before training",
    ),
    "plan": (
        "segzoo.dataset_cli",
        "cmd_plan",
        "print a dataset's plan: normalisation, spacing, patch size, 3D topology",
    ),
    "evaluate": (
        "segzoo.dataset_cli",
        "cmd_evaluate",
        "score a folder of predictions against reference label maps (Dice, HD95)",
    ),
    "export": (
        "segzoo.tools_cli",
        "cmd_export",
        "export a checkpoint's net to ONNX, TorchScript or a pretrained directory",
    ),
    "cv": (
        "segzoo.cv_cli",
        "cmd_cv",
        "k-fold cross-validation: every fold into RUN/fold_k/, then RUN/cv_metrics.json",
    ),
}


def _lazy_command(module: str, function: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(argv)

    return run


def _plain_commands() -> dict[str, tuple[Callable[[Sequence[str]], int], str]]:
    cmds: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
        "nets": (_cmd_nets, "list the registered nets with parameter counts"),
        "synth": (_cmd_synth, "write a synthetic dataset (kits19, chaos, brats, nnunet) in its real on-disk format"),
        "recipes": (_cmd_recipes, "list, show or copy the packaged recipes (segzoo fit --config NAME)"),
    }
    for name, (module, function, description) in _PLAIN_ELSEWHERE.items():
        cmds[name] = (_lazy_command(module, function), description)
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
    print("\n  --version             print the version")
    print("  --print_shtab SHELL   print a completion script (bash, zsh, tcsh) for the training subcommands:")
    print("                        segzoo --print_shtab bash > ~/.local/share/bash-completion/completions/segzoo")
    print("\nExamples (recipes are packaged: they work from any folder; `segzoo recipes` lists them):")
    print("  segzoo fit --config kits19_demo --trainer.default_root_dir runs/demo")
    print("  segzoo fit --config chaos --model.net unet_pfm --trainer.max_epochs 1")


def _print_shtab(argv: Sequence[str]) -> int:
    """A shell-completion script (shtab) for the command names, recipe names after ``--config`` and common options.

    jsonargparse's own ``--print_completion`` walks every subclass of every typed argument of the Lightning parser
    (all ``nn.Module``s) and did not finish in minutes here, so this completes the parts a user types most.
    """
    p = argparse.ArgumentParser(prog="segzoo --print_shtab")
    p.add_argument("shell", nargs="?", default="bash", choices=("bash", "zsh", "tcsh"))
    shell = p.parse_args(argv).shell
    from segzoo.extras import require

    shtab = require("shtab", "segzoo --print_shtab")
    from segzoo.recipes import list_recipes

    parser = argparse.ArgumentParser(prog="segzoo")
    parser.add_argument("--version", action="store_true")
    sub = parser.add_subparsers(dest="command")
    recipes = list_recipes()
    for name in LIGHTNING_COMMANDS:
        cmd = sub.add_parser(name, help=name)
        cmd.add_argument("--config", "-c", choices=recipes)  # recipe names (a YAML path works as well)
        cmd.add_argument("--ckpt_path").complete = shtab.FILE
        for option in ("--trainer.default_root_dir", "--data.data_dir"):
            cmd.add_argument(option).complete = shtab.DIRECTORY
        for option in ("--model.net", "--trainer.max_epochs", "--trainer.max_steps", "--trainer.accelerator"):
            cmd.add_argument(option)
        cmd.add_argument("--print_config", action="store_true")
    for name in _plain_commands():
        sub.add_parser(name, help=name)
    print(shtab.complete(parser, shell=shell))
    return 0


# ------------------------------------------------------------------ end-of-run summary
def run_summary(cli: Any, subcommand: str) -> list[str]:
    """Lines of the block printed after ``fit`` / ``validate`` / ``test``: checkpoint, config, metrics, logs."""
    trainer, task = cli.trainer, cli.model
    root = Path(trainer.default_root_dir).resolve()
    lines = [f"segzoo {subcommand}: done; run folder {root}"]
    ckpt_cb = getattr(trainer, "checkpoint_callback", None)
    if subcommand == "fit" and ckpt_cb is not None:
        last, best = getattr(ckpt_cb, "last_model_path", ""), getattr(ckpt_cb, "best_model_path", "")
        if last:
            lines.append(f"  last checkpoint   {Path(last).resolve()}")
        if best and best != last:
            score = f"{ckpt_cb.monitor} = {_fmt(ckpt_cb.best_model_score)}"
            lines.append(f"  best checkpoint   {Path(best).resolve()} ({score})")
    configs = []
    try:
        if trainer.log_dir:
            configs.append(Path(trainer.log_dir).resolve() / "config.yaml")
    except Exception:  # a logger without a log_dir before its experiment exists
        pass
    configs.append(root / "config.yaml")
    config = next((p for p in configs if p.is_file()), None)
    if config is not None:
        lines.append(f"  resolved config   {config}")
    summary = getattr(task, "last_summary", None)
    metrics_file = getattr(task, "metrics_file", None)
    if summary:
        means = summary.get("mean", {})
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in list(means.items())[:6])
        where = f" (per case: {root / metrics_file})" if metrics_file and (root / metrics_file).is_file() else ""
        lines.append(f"  metrics           {shown}{where}")
        warning = getattr(task, "dead_class_warning", None)
        if warning:  # a class never predicted (or Dice 0 wherever present): said here too, not only in the log
            lines.append(f"  warning           {warning.removeprefix('segzoo: ')}")
    elif subcommand == "fit":
        lines.append(
            f"  no validation ran: the fit stopped after {trainer.global_step} training steps, before the first"
            f" validation (every {trainer.check_val_every_n_epoch} epoch(s)); so no best checkpoint and no metrics."
            " Run `segzoo validate --config ... --ckpt_path LAST` or lower --trainer.check_val_every_n_epoch"
        )
    else:
        lines.append("  no metrics: the task has no metric or the data had no labelled cases")
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or root
        if type(logger).__name__ == "WandbLogger":
            folder = Path(logger.save_dir or root) / "wandb"
        lines.append(f"  logs              {type(logger).__name__}: {Path(folder).resolve()}")
    return lines


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if from_sys:  # the process is ours: SEGZOO_CPU_ALLOCATOR=reuse opts in (segzoo.utils.cpu_allocator_from_env)
        from segzoo.utils import cpu_allocator_from_env

        cpu_allocator_from_env()
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return 0
    if argv[0] == "--print_shtab":
        return _print_shtab(argv[1:])
    if argv[0] in ("-V", "--version"):
        from segzoo import __version__

        print(f"segzoo {__version__}")
        return 0
    plain = _plain_commands()
    if argv[0] in plain:
        try:
            _check_extras(argv)
            return plain[argv[0]][0](argv[1:]) or 0
        except Exception as e:
            from segzoo.extras import missing_extra_message

            message = next(
                (m for err in _chain(e) if (m := missing_extra_message(err, f"segzoo {argv[0]}")) is not None), None
            )
            if message is None:
                raise
            print(f"segzoo {argv[0]}: error: {message}", file=sys.stderr)
            return 1
    if argv[0] not in LIGHTNING_COMMANDS:
        print(
            f"segzoo: error: unknown command '{argv[0]}'; expected one of {', '.join((*LIGHTNING_COMMANDS, *plain))}",
            file=sys.stderr,
        )
        return 2
    return _run_lightning(argv, from_sys)


def _check_extras(argv: Sequence[str]) -> None:
    """Name a missing extra before a command starts work that needs it (``segzoo export --format onnx``)."""
    from segzoo.extras import require

    if argv[0] == "export" and ("onnx" in argv or "--format=onnx" in argv):
        for module in ("onnx", "onnxscript"):
            require(module, "segzoo export --format onnx")


def _chain(error: BaseException):
    """The error and its causes (a library may wrap the ``ImportError`` of a missing optional package)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _run_lightning(argv: list[str], from_sys: bool = False) -> int:
    from segzoo._console import quiet_defaults

    quiet_defaults()
    saved_argv = sys.argv
    cli_args: list[str] | None = argv
    try:
        expanded = expand_args(list(argv))
    except KeyError as e:  # an unknown recipe name: one line with the closest names
        print(f"segzoo {argv[0]}: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if from_sys:
        # From the command line the rewritten arguments go into sys.argv: Lightning's DDP launcher re-runs the command
        # from it for the other ranks (and LightningCLI warns when given both args and a command line).
        sys.argv = [saved_argv[0], *expanded]
        cli_args = None
    else:  # called from Python (demo, notebooks, tests): LightningCLI must not see the caller's argv
        sys.argv = saved_argv[:1]
    try:
        cli = __getattr__("SegzooCLI")(args=cli_args)
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
        if isinstance(e, KeyError) and str(e.args[0] if e.args else "").startswith("unknown recipe"):
            print(f"segzoo {argv[0]}: error: {e.args[0]}", file=sys.stderr)
            return 2
        raise
    finally:
        sys.argv = saved_argv
    if argv[0] in ("fit", "validate", "test") and cli.trainer.is_global_zero:
        print("\n" + "\n".join(run_summary(cli, argv[0])))
    # every rank ends its process group once the command returned on it (a rank that failed must not wait on the
    # others): left to interpreter shutdown, gloo can abort a finished run (segzoo.utils.destroy_process_group_at_exit)
    from segzoo.utils import destroy_process_group

    destroy_process_group()
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
