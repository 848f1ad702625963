"""Every packaged recipe parses and instantiates; linked values agree; the DR-Net recipes train on tiny synthetic data."""

import json
from pathlib import Path

import pytest
import torch
from monai.inferers import SliceInferer

import segzoo
from segzoo.cli import SegzooCLI, main
from segzoo.recipes import list_recipes, recipe_files, recipe_root

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RECIPES = list_recipes()
FAMILIES = ("drnet", "unet2d", "cenet", "denseaspp", "msdual")
ZOO_2D = [r for r in RECIPES if r.split("/")[-1] in ("chaos", "brats")]


def _instantiate(recipe: str, tmp_path: Path, *extra: str) -> SegzooCLI:
    # run=False parses the recipe and builds trainer, task (net, loss, inferer, metric) and datamodule without fitting
    return SegzooCLI(args=["--config", recipe, "--trainer.default_root_dir", str(tmp_path), *extra], run=False)


def test_recipes_are_the_repository_configs():
    assert recipe_root().resolve() == CONFIG_DIR.resolve()
    for family in FAMILIES:
        assert {f"{family}/chaos", f"{family}/brats"} <= set(RECIPES)
        assert recipe_files(f"{family}/brats") == [CONFIG_DIR / "brats.yaml", CONFIG_DIR / "nets" / f"{family}.yaml"]
    assert {"kits19", "kits19_demo", "chaos", "brats"} <= set(RECIPES)
    # a net fragment is dataset-free: a few lines, no channel counts (they come from the datamodule)
    for fragment in (CONFIG_DIR / "nets").glob("*.yaml"):
        text = "\n".join(line for line in fragment.read_text().splitlines() if not line.startswith("#"))
        assert "in_channels" not in text and "out_channels" not in text
        assert len(text.splitlines()) < 20


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory):
    """An nnU-Net raw dataset for the generic recipes (they plan from the data, so they need one to instantiate)."""
    from segzoo.data.synthetic.nnunet import write_nnunet

    root = tmp_path_factory.mktemp("own")
    write_nnunet(root / "Dataset501_Synth", cases=3, test_cases=0)
    write_nnunet(root / "Dataset502_Reg", cases=3, test_cases=0, regions=True)
    return root


# the generic recipes plan from the data, so they need a dataset to instantiate: recipe -> (dataset, classes)
GENERIC = {
    "mss_unet3d": ("Dataset501_Synth", 4),
    "drnet": ("Dataset501_Synth", 4),
    "mss_unet3d_regions": ("Dataset502_Reg", 3),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_config_instantiates(recipe, tmp_path, own_dataset):
    extra = ["--data.data_dir", str(own_dataset / GENERIC[recipe][0])] if recipe in GENERIC else []
    cli = _instantiate(recipe, tmp_path, *extra)
    config = recipe
    if recipe in GENERIC:  # channels and classes (labels, or regions) from dataset.json
        assert (cli.datamodule.in_channels, cli.datamodule.num_classes) == (2, GENERIC[recipe][1])
    if recipe in GENERIC and recipe != "drnet":  # the 3D topology from the plan
        plan = cli.datamodule.plan
        net_args = cli.model.net.init_config["init_args"]
        assert (list(net_args["kernel_size"]), list(net_args["strides"])) == (plan["kernel_size"], plan["strides"])
        assert list(cli.datamodule.patch_size) == plan["patch_size"]
    assert isinstance(cli.model, segzoo.tasks.SegmentationTask)
    assert isinstance(cli.model.net, torch.nn.Module) and isinstance(cli.model.loss, torch.nn.Module)
    assert cli.model.metric is not None
    assert cli.trainer.default_root_dir == str(tmp_path)
    assert not any(tmp_path.iterdir()), "instantiating a config must not write anything"
    # linked: the window is the training patch (3D) or image (2D); channels and classes are the datamodule's
    dm, net_args = cli.datamodule, cli.model.net.init_config["init_args"]
    window = getattr(dm, "patch_size", None) or dm.image_size
    assert tuple(cli.model.inferer.roi_size) == tuple(window)
    assert (net_args["in_channels"], net_args["out_channels"]) == (dm.in_channels, dm.num_classes)
    if config in ZOO_2D:
        _check_2d_config(cli, config.split("/")[-1])


def test_links_follow_the_datamodule(tmp_path):
    cli = _instantiate(
        "unet2d/brats", tmp_path, "--data.image_size=[128, 128]", "--data.resize_mode=resize", "--model.net=unet_pfm"
    )
    assert tuple(cli.model.inferer.roi_size) == (128, 128)
    net_args = cli.model.net.init_config["init_args"]
    assert (net_args["in_channels"], net_args["out_channels"], net_args["block"]) == (4, 4, "pfm")
    cli = _instantiate("kits19_demo", tmp_path, "--data.patch_size=[16, 64, 64]")
    assert tuple(cli.model.inferer.roi_size) == (16, 64, 64)


def _check_2d_config(cli: SegzooCLI, dataset: str) -> None:
    """Paper settings, and the net, inferer, datamodule and metric agree with each other."""
    task, dm, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(dm).__name__ == {"chaos": "CHAOSDataModule", "brats": "BraTSDataModule"}[dataset]
    assert type(task.metric).__name__ == {"chaos": "CHAOSMetric", "brats": "BraTSMetric"}[dataset]
    # the net takes the datamodule's channels and predicts its classes (SegNet records its constructor args)
    net_args = task.net.init_config["init_args"]
    assert (net_args["in_channels"], net_args["out_channels"]) == (dm.in_channels, dm.num_classes)
    # whole-case inference slice by slice at the training size
    assert isinstance(task.inferer, SliceInferer)
    assert task.inferer.spatial_dim == 0
    assert tuple(task.inferer.roi_size) == dm.image_size == (256, 256)
    # the paper: Adam lr 1e-3 betas (0.9, 0.999), cross-entropy, 300 epochs, 3:2 split
    opt = task.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.999)
    assert type(task.loss).__name__ == "CELoss"
    assert trainer.max_epochs == 300
    assert dm.train_fraction == 0.6
    # a fresh machine gets synthetic data in a gitignored folder
    assert dm.synthetic_cases > 0 and dm.data_dir.parts[0] == "runs"
    if dataset == "brats":
        assert dm.resize_mode == "pad" and dm.slice_selection == "largest2" and dm.synthetic_size == "large"
    callbacks = {type(c).__name__: c for c in trainer.callbacks}
    assert callbacks["RunCheckpoint"].monitor == "val/score" and callbacks["RunCheckpoint"].mode == "max"
    assert callbacks["RunCheckpoint"].save_last and "RunArtifacts" in callbacks
    if type(task.net).__name__ == "DRNet":
        # the registered default; the paper: 2,700,581 (CHAOS) and 2,704,156 (BraTS), aimed within +-10 %
        count = sum(p.numel() for p in task.net.parameters())
        if dataset == "chaos":
            assert count == 2_484_949
        assert abs(count / {"chaos": 2_700_581, "brats": 2_704_156}[dataset] - 1) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["chaos", "brats"])
def test_drnet_config_fits_on_tiny_synthetic_data(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the logger's save_dir resolves to, it stays in the temp folder
    run, data = tmp_path / "run", tmp_path / "data"
    args = [
        "fit",
        "--config",
        f"drnet/{dataset}",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--data.data_dir",
        str(data),
        "--data.image_size=[64, 64]",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--data.synthetic_cases=2",
        "--data.synthetic_size=small",
        # CHAOS metrics are volumetric: whole cases only (a slice selection is refused by CHAOSMetric)
        f"--data.slice_selection={'largest2' if dataset == 'brats' else 'all'}",
    ]
    if dataset == "brats":
        args.append("--data.resize_mode=resize")  # 96x96 synthetic slices do not pad into 64x64
    assert main(args) == 0
    assert any(data.iterdir()), "synthetic cases were not written"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run / "metrics.json").read_text())
    dice_keys = {"chaos": {"liver/dice", "spleen/dice", "mean/dice"}, "brats": {"WT/dice", "TC/dice", "ET/dice"}}
    assert dice_keys[dataset] <= set(summary["mean"]) and "score" in summary["mean"]
    assert len(summary["cases"]) == 1  # 2 cases, 3:2 split -> 1 held out
    assert list(tmp_path.rglob("lightning_logs/*/metrics.csv")), "the CSVLogger wrote no metrics.csv"
