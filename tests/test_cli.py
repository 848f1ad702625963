"""The segzoo command: help, plain subcommands, LightningCLI fit/validate/test with run layout, one-line errors."""

import json
import textwrap

import pytest
import torch

from segzoo.cli import main

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
    for cmd in ("fit", "validate", "test", "predict", "nets", "synth", "infer"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["nets", "synth", "infer", "fit"])
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
def test_fit_validate_test_leave_run_layout(toy_config, tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", str(toy_config), "--trainer.default_root_dir", str(run)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "fingerprint.json").read_text()) == {"toy": True}
    ckpts = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert ckpts, "best checkpoint by val/score missing"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["segzoo_format"]["net"]["class_path"] == "segzoo.nets.mss_unet.MSSUNet"

    (run / "metrics.json").unlink()
    for cmd in ("validate", "test"):
        assert (
            main([cmd, "--config", str(toy_config), "--trainer.default_root_dir", str(run), "--ckpt_path", str(last)])
            == 0
        )
        summary = json.loads((run / "metrics.json").read_text())
        assert {"kidney/dice", "tumour/dice", "composite/dice"} <= set(summary["mean"])
        assert len(summary["cases"]) == 2 and all("case_id" in c for c in summary["cases"])
        # the toy problem is easy: three epochs learn the outer box
        assert summary["mean"]["kidney/dice"] > 0.5
