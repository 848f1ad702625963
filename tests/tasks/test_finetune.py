"""Fine-tuning (``--model.init_from``): a 3-class KiTS19 checkpoint starts a 4-label run with every weight but the
output heads (checked by name) and trains; ``freeze_encoder_epochs`` leaves the encoder exactly as loaded."""

import json
import pathlib

import pytest
import torch

import segzoo
from segzoo.checkpoint import CheckpointError, load_checkpoint
from segzoo.cli import main
from segzoo.data.io import DataError
from segzoo.data.synthetic.nnunet import write_nnunet
from segzoo.nets import MSSUNet
from segzoo.tasks.finetune import ENCODER_NAMES, encoder_parameters, load_matching_weights, source_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

TOPOLOGY = ["--model.net.init_args.kernel_size", "[3,3,3]", "--model.net.init_args.strides", "[1,2,2]"]
NET = ["--model.net.init_args.base_features", "4", "--model.net.init_args.max_features", "16", *TOPOLOGY]
TRAINER = [
    "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_epochs", "1",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--data.iterations_per_epoch", "2", "--data.num_workers", "0",
    "--data.num_val_cases", "1", "--data.patch_size", "[16,32,32]",
]  # fmt: skip
CALLBACKS = "[{class_path: segzoo.tasks.RunCheckpoint, init_args: {save_last: true}}]"


def _net(out_channels: int) -> MSSUNet:
    return MSSUNet(3, 1, out_channels, kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, max_features=16)


@pytest.fixture(scope="module")
def kits_ckpt(tmp_path_factory):
    """A 3-class KiTS19 checkpoint of the tiny MSS U-Net (2 steps on 3 synthetic cases)."""
    root = tmp_path_factory.mktemp("kits")
    args = ["fit", "--config", "kits19_demo", "--data.data_dir", str(root / "data"), "--data.synthetic_cases", "3"]
    args += ["--data.num_test_cases", "0", "--data.target_spacing", "[4.0,4.0,4.0]", "--trainer.logger", "false"]
    args += ["--trainer.callbacks", CALLBACKS, "--trainer.default_root_dir", str(root / "run"), *TRAINER, *NET]
    assert main(args) == 0
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def one_channel_dataset(tmp_path_factory):
    """The synthetic nnU-Net dataset (4 labels) with its CT channel only, as a KiTS19 net takes."""
    root = tmp_path_factory.mktemp("own") / "Dataset502_OneChannel"
    write_nnunet(root, cases=4, test_cases=1, seed=2)
    for f in root.glob("images*/*_0001.nii.gz"):
        f.unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_everything_but_the_heads_is_loaded_by_name(kits_ckpt):
    source = source_state_dict(kits_ckpt)
    net = _net(4)
    fresh_heads = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("heads.")}
    report = load_matching_weights(net, source, str(kits_ckpt))
    assert fresh_heads and set(report.reinitialised) == set(fresh_heads)  # the heads, and nothing else
    assert set(report.loaded) == set(net.state_dict()) - set(fresh_heads) and report.unexpected == []
    state = net.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in report.loaded)
    assert all(torch.equal(state[k], v) for k, v in fresh_heads.items())  # kept their fresh initialisation
    line = report.summary()
    assert "\n" not in line and f"loaded {len(report.loaded)}/{len(state)}" in line and "unexpected 0" in line
    # the same number of classes: everything loads
    assert load_matching_weights(_net(3), source).reinitialised == {}


def test_finetune_a_kits19_checkpoint_onto_four_labels(kits_ckpt, one_channel_dataset, tmp_path, capsys):
    run = tmp_path / "ft"
    args = ["fit", "--config", "mss_unet3d", "--data.data_dir", str(one_channel_dataset), "--data.plan_net", "false"]
    args += ["--trainer.logger", "false", "--trainer.callbacks", CALLBACKS, "--trainer.default_root_dir", str(run)]
    args += ["--model.init_from", str(kits_ckpt), "--model.freeze_encoder_epochs", "1", *TRAINER, *NET]
    capsys.readouterr()
    assert main(args) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "init_from" in x]
    assert len(lines) == 1 and "re-initialised 4: heads.0.conv.conv.weight ((3, 4, 1, 1, 1) in the source" in lines[0]
    source = source_state_dict(kits_ckpt)
    tuned = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert tuned.net.init_config["init_args"]["out_channels"] == 4
    state = tuned.net.state_dict()
    encoder = [k for k in state if k.startswith("encoder.")]
    decoder = [k for k in state if k.startswith("decoder.") and k.endswith("weight")]
    assert encoder and all(torch.equal(state[k], source[k]) for k in encoder)  # frozen for the one epoch
    assert decoder and all(not torch.equal(state[k], source[k]) for k in decoder)  # trained
    assert (run / "metrics.json").is_file()


def test_a_net_of_another_architecture_is_refused_in_one_line(kits_ckpt):
    other = segzoo.create_net("unet2d", features=[4, 8, 16, 32, 64])
    with pytest.raises(DataError, match="none of its") as info:
        load_matching_weights(other, source_state_dict(kits_ckpt), str(kits_ckpt))
    assert str(kits_ckpt) in str(info.value) and "\n" not in str(info.value)


def test_unexpected_and_missing_weights_are_reported():
    net = _net(3)
    state = dict(net.state_dict())
    state["extra.weight"] = torch.zeros(2)
    dropped = next(iter(state))
    del state[dropped]
    report = load_matching_weights(_net(3), state)
    assert report.unexpected == ["extra.weight"] and report.reinitialised == {dropped: "not in the source"}


def test_init_from_is_read_by_the_safe_loader(tmp_path):
    bad = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {}, "x": pathlib.PurePosixPath("not/plain/data")}, bad)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        source_state_dict(bad)


def test_hf_hub_sources_go_through_the_hub_cache(tmp_path, monkeypatch):
    folder = _net(3).save_pretrained(tmp_path / "pretrained")
    asked = []
    monkeypatch.setattr(
        "segzoo.nets.pretrained.pretrained_folder", lambda source, revision=None: asked.append(source) or folder
    )
    state = source_state_dict("hf-hub:org/tiny")
    assert asked == ["hf-hub:org/tiny"] and set(state) == set(_net(3).state_dict())


@pytest.mark.parametrize("name", ["mss_unet2d", "drnet", "unet2d", "cenet", "denseaspp", "msdual"])
def test_every_net_family_has_an_encoder(name):
    net = segzoo.create_net(name)
    params = encoder_parameters(net)
    assert 0 < sum(p.numel() for p in params) < sum(p.numel() for p in net.parameters())


def test_freezing_a_net_without_an_encoder_is_refused_at_construction():
    from segzoo.tasks import SegmentationTask

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1))
    assert not set(dict(net.named_children())) & set(ENCODER_NAMES)
    with pytest.raises(ValueError, match="no encoder submodule"):
        SegmentationTask(net, torch.nn.CrossEntropyLoss(), freeze_encoder_epochs=2)


def test_a_task_loads_init_from_when_the_fit_sets_it_up(kits_ckpt, capsys):
    from segzoo.tasks import SegmentationTask

    task = SegmentationTask(_net(4), torch.nn.CrossEntropyLoss(), init_from=str(kits_ckpt))
    fresh = {k: v.clone() for k, v in task.net.state_dict().items()}
    task.setup("validate")  # only a fit starts from init_from
    assert all(torch.equal(v, fresh[k]) for k, v in task.net.state_dict().items())
    task.setup("fit")
    source, state = source_state_dict(kits_ckpt), task.net.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in state if not k.startswith("heads."))
    assert all(torch.equal(state[k], fresh[k]) for k in state if k.startswith("heads."))
    assert capsys.readouterr().err.count("init_from") == 1
