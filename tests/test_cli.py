"""The segzoo command: help, plain subcommands, LightningCLI fit/validate/test with run layout, one-line errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from expect import expect_cli_error

from segzoo.cli import _PLAIN_ELSEWHERE, expand_args, main

REPO = Path(__file__).resolve().parents[1]

TOY_CONFIG = textwrap.dedent(
    """
    seed_everything: 0
    trainer:
      max_epochs: 3
      logger: false
      enable_progress_bar: false
      enable_model_summary: false
      accelerator: cpu
      callbacks:
        - class_path: segzoo.tasks.RunCheckpoint
          init_args: {save_last: true, monitor: val/score, mode: max}
        - class_path: segzoo.tasks.RunArtifacts
    model:  # net and loss: the tiny ones of conftest.write_config
      metric:
        class_path: segzoo.metrics.KiTS19Metric
      optimizer:
        class_path: torch.optim.Adam
        init_args: {lr: 0.01}
    data:
      class_path: toydata.ToyDataModule
    """
)


@pytest.fixture
def toy_config(write_config):
    return write_config(TOY_CONFIG, "toy.yaml")


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "validate", "test", "predict", "nets", "synth", "infer", "recipes", "export"):
        assert cmd in out


def test_plain_command_table_matches_the_modules():
    from segzoo.cv_cli import CV_COMMANDS
    from segzoo.dataset_cli import DATASET_COMMANDS
    from segzoo.inference.cli import INFERENCE_COMMANDS
    from segzoo.tools_cli import TOOLS_COMMANDS

    commands = {**INFERENCE_COMMANDS, **TOOLS_COMMANDS, **DATASET_COMMANDS, **CV_COMMANDS}
    for name, (function, description) in commands.items():
        assert _PLAIN_ELSEWHERE[name][1:] == (function.__name__, description)
    assert set(_PLAIN_ELSEWHERE) == {*commands, "demo"}


def _imports_after(argv: list[str], tmp_path: Path) -> tuple[set[str], str]:
    """Heavy modules imported by running ``segzoo ARGV`` in a fresh interpreter, and its stdout."""
    script = (
        "import sys\nfrom segzoo.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', *sorted(m for m in ('lightning', 'wandb', 'torch', 'monai') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("IMPORTED")][-1]
    return set(line.split()[1:]), result.stdout


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--version"], set()),
        (["--help"], set()),
        (["recipes"], set()),
        (["recipes", "show", "kits19"], set()),
        (["nets", "drnet"], {"torch", "monai"}),
        (["synth", "--help"], set()),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_light_commands_import_no_lightning(argv, allowed, tmp_path):
    imported, out = _imports_after(argv, tmp_path)
    assert imported <= allowed, f"segzoo {' '.join(argv)} imported {sorted(imported - allowed)}"
    if argv == ["--version"]:
        import segzoo

        assert out.startswith(f"segzoo {segzoo.__version__}")


def test_print_shtab_completes_commands_and_recipes(capsys):
    pytest.importorskip("shtab")
    assert main(["--print_shtab", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o bashdefault -F _shtab_segzoo segzoo" in script
    assert "kits19_demo" in script and "recipes" in script and "--trainer.default_root_dir" in script


def test_registry_names_and_recipe_names_are_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import segzoo

    args = expand_args(["fit", "--config", "unet2d/chaos", "--model.net", "mss_unet3d", "--trainer.max_epochs=1"])
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert [Path(c).name for c in configs] == ["chaos.yaml", "unet2d.yaml"]
    net = json.loads(args[args.index("--model.net") + 1])
    assert net == segzoo.create_net("mss_unet3d").init_config
    assert args[-1] == "--trainer.max_epochs=1"
    # a class path, a class name, a mapping and a YAML file are left to jsonargparse
    kept = ["--model.net=segzoo.nets.DRNet", "--model.net", "DRNet", "--model.net", '{"class_path": "x.Y"}']
    assert expand_args(kept) == ["--model.net", "segzoo.nets.DRNet", "--model.net", "DRNet", *kept[3:]]
    (tmp_path / "my.yaml").write_text("seed_everything: 0\n")
    assert expand_args(["--config=my.yaml"]) == ["--config", "my.yaml"]


def test_unknown_recipe_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "kits20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown recipe 'kits20'" in err and "kits19_demo" in err


def test_registered_net_on_the_command_line(toy_config, tmp_path):
    from segzoo.cli import SegzooCLI

    cli = SegzooCLI(
        args=[
            "--config",
            str(toy_config),
            "--model.net",
            "mss_unet3d_small",
            "--model.net.init_args.out_channels",
            "3",
        ],
        run=False,
    )
    assert cli.model.net.init_config == __import__("segzoo").create_net("mss_unet3d_small").init_config


def test_fit_without_validation_says_so(toy_config, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", "--config", str(toy_config), "--trainer.default_root_dir", str(run), "--trainer.max_steps", "1"]
    assert main([*args, "--trainer.check_val_every_n_epoch", "5"]) == 0
    out = capsys.readouterr().out
    assert "segzoo fit: done" in out and f"last checkpoint   {run.resolve() / 'checkpoints' / 'last.ckpt'}" in out
    assert "no validation ran" in out and "metrics  " not in out


@pytest.mark.parametrize("cmd", ["nets", "synth", "infer", "fit", "recipes", "demo"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_nets_lists_parameter_counts(capsys):
    assert main(["nets", "mss_unet3d*"]) == 0
    out = capsys.readouterr().out
    assert "mss_unet3d" in out and "14,680,712" in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_unknown_config_key_is_one_line_naming_the_key(toy_config, write_config, capsys):
    bad = write_config(TOY_CONFIG, "bad.yaml", model={"optimizer": {"init_args": {"lrr": 3}}})
    assert main(["fit", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "lrr" in err
    assert main(["fit", "--config", str(toy_config), "--model.nett", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.nett" in err


@pytest.mark.slow
def test_fit_validate_test_leave_run_layout(toy_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--config", str(toy_config), "--trainer.default_root_dir", str(run)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "fingerprint.json").read_text()) == {"toy": True}
    ckpts = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert ckpts, "best checkpoint by val/score missing"
    assert "segzoo fit: done" in capsys.readouterr().out  # the summary block
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["segzoo_format"]["net"]["class_path"] == "segzoo.nets.mss_unet.MSSUNet"

    (run / "metrics.json").unlink()
    for cmd in ("validate", "test"):
        assert (
            main([cmd, "--config", str(toy_config), "--trainer.default_root_dir", str(run), "--ckpt_path", str(last)])
            == 0
        )
        summary = json.loads((run / "metrics.json").read_text())
        printed = capsys.readouterr().out
        assert f"segzoo {cmd}: done" in printed and "metrics           kidney/dice" in printed
        assert f"(per case: {run.resolve() / 'metrics.json'})" in printed
        assert {"kidney/dice", "tumour/dice", "composite/dice"} <= set(summary["mean"])
        assert len(summary["cases"]) == 2 and all("case_id" in c for c in summary["cases"])
        # the toy problem is easy: three epochs learn the outer box
        assert summary["mean"]["kidney/dice"] > 0.5


def test_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,1,0.5\n1,2,0.4\n")
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if the [notebooks] extra were not installed
    assert main(["curves", "--run", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("segzoo curves: error: segzoo curves needs 'pandas'") and "[notebooks] extra" in err
    assert "pip install segzoo" not in err  # the index name belongs to another project


def test_a_wrapped_missing_module_is_found_in_the_cause_chain():
    from segzoo.cli import _chain
    from segzoo.extras import missing_extra_message

    try:
        try:
            raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
        except ImportError as e:
            raise RuntimeError("Module onnx is not installed!") from e  # as torch.onnx wraps it
    except RuntimeError as wrapped:
        messages = [m for err in _chain(wrapped) if (m := missing_extra_message(err, "segzoo export"))]
    assert len(messages) == 1 and "[onnx] extra" in messages[0]
    assert missing_extra_message(ModuleNotFoundError("x", name="numpy"), "f") is None  # not an optional package


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            """
            trainer: {logger: false, max_epochs: 1}
            model:
              net: {class_path: segzoo.nets.MSSUNet}
              loss: {class_path: monai.losses.DiceCELoss}
            data:
              class_path: toydata.ToyDataModule
              init_args: {batch_sizee: 2}
            """
        )
    )
    expect_cli_error(["fit", "--config", config], capsys, "batch_sizee")
