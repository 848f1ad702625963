"""Dataset sources: nnU-Net v2 raw, Decathlon and MONAI datalists read into the same cases; MONAI as the oracle of
datalist reading; region labels; macOS resource files ignored."""

import json
import shutil

import numpy as np
import pytest

from segzoo.data.io import DataError
from segzoo.data.sources import open_source, read_datalist
from segzoo.data.sources.nnunet import parse_labels
from segzoo.data.synthetic.nnunet import write_nnunet


@pytest.fixture(scope="module")
def three_forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("forms")
    for form in ("nnunet", "msd", "datalist"):
        write_nnunet(root / form, cases=3, test_cases=1, seed=3, form=form)
    return root


def test_three_forms_read_the_same_cases(three_forms):
    sources = [
        open_source(three_forms / "nnunet"),
        open_source(three_forms / "msd"),
        open_source(three_forms / "datalist" / "datalist.json"),
    ]
    assert [s.kind for s in sources] == ["nnunet", "msd", "datalist"]
    for s in sources:
        assert s.channel_names == ["CT", "T2"]
        assert s.labels == {0: "background", 1: "organ", 2: "lesion", 3: "vessel"}
        assert [c.case_id for c in s.training] == ["synth_000", "synth_001", "synth_002"]
        assert len(s.test) == 1 and s.problems == []
    ref = [c.load() for c in sources[0].training]
    for s in sources[1:]:
        for (image, label, affine), case in zip(ref, s.training):
            other_image, other_label, other_affine = case.load()
            assert other_image.shape == image.shape and other_image.shape[0] == 2
            np.testing.assert_array_equal(other_image, image)  # the 4D Decathlon file holds the same channels
            np.testing.assert_array_equal(other_label, label)
            np.testing.assert_allclose(other_affine, affine)


def test_cases_are_stored_in_mixed_orientations(three_forms):
    import nibabel as nib

    source = open_source(three_forms / "nnunet")
    codes = {nib.aff2axcodes(nib.load(str(c.image)).affine) for c in source.training}
    assert len(codes) == 3  # every case another voxel order on disk
    zooms = nib.load(str(source.training[0].image)).header.get_zooms()
    assert max(zooms) / min(zooms) > 2.3  # thick slices


def test_monai_reads_the_datalist_as_segzoo_does(three_forms):
    from monai.data import load_decathlon_datalist

    path = three_forms / "datalist" / "datalist.json"
    theirs = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training")
    ours = read_datalist(path).training
    assert len(theirs) == len(ours)
    for t, o in zip(theirs, ours):
        assert [str(p.resolve()) for p in o.images] == [str(type(o.image)(p).resolve()) for p in t["image"]]
        assert str(o.label.resolve()) == str(type(o.label)(t["label"]).resolve())


def test_decathlon_ignores_macos_resource_files(three_forms, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(three_forms / "msd", root)
    (root / "imagesTr" / "._synth_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/._synth_000.nii.gz", "label": "./labelsTr/._synth_000.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    source = open_source(root)
    assert [c.case_id for c in source.training] == ["synth_000", "synth_001", "synth_002"]
    assert source.problems == []


def test_region_labels_follow_nnunet(tmp_path):
    labels, regions = parse_labels(
        tmp_path / "dataset.json",
        {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    )
    assert regions == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert labels == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    write_nnunet(tmp_path / "reg", cases=2, test_cases=0, regions=True)
    source = open_source(tmp_path / "reg")
    assert source.regions == {"organ": [1, 2, 3], "lesion": [2], "vessel": [3]}
    assert source.num_classes == 3  # one sigmoid output per region
    assert source.regions_class_order == [1, 2, 3]


def test_unknown_layout_is_one_line(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="not a dataset"):
        open_source(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(DataError, match="neither nnU-Net v2"):
        open_source(tmp_path)
