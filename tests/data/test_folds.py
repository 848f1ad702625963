"""``--data.num_folds K --data.fold k`` in every datamodule: the K validation folds partition the cases the test split
leaves, a rerun reads the recorded folds, a user's nnU-Net splits file is taken as it is, and (3D) every fold
preprocesses alike."""

import json

import pytest

from segzoo.data.datamodule import KiTS19DataModule, PatchDataModule
from segzoo.data.splits import SPLITS_FILE, fold_record_name, read_splits
from segzoo.data.synthetic.kits19 import write_kits19
from segzoo.data.synthetic.nnunet import write_nnunet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds") / "Dataset503_Folds"
    write_nnunet(root, cases=7, test_cases=1, seed=4)
    return root


def _patch(data_dir, fold, **kw) -> PatchDataModule:
    args = {"num_folds": 3, "num_test_cases": 1, "max_patch_voxels": 8192, "num_workers": 0, "patch_size": [8, 16, 16]}
    return PatchDataModule(str(data_dir), fold=fold, **{**args, **kw})


def _assert_partition(splits, labelled, test):
    vals = [set(val) for _, val, _ in splits]
    pool = set(labelled) - set(test)
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)
    for train, val, t in splits:
        assert t == test and set(train) == pool - set(val)


def test_patch_folds_partition_and_are_recorded(nnunet):
    dms = [_patch(nnunet, k) for k in range(3)]
    cases = dms[0]._list_cases()
    labelled = [c.case_id for c in cases if c.label is not None]
    splits = [dm._split(cases) for dm in dms]
    test = splits[0][2]
    assert len(test) == 1
    _assert_partition(splits, labelled, test)
    record = dms[0].cache_dir / fold_record_name(3, 0)
    assert [s["val"] for s in read_splits(record)] == [s[1] for s in splits]
    # a rerun reads the record (edited here: the file wins over the seeded draw)
    stored = json.loads(record.read_text())
    stored[0], stored[1] = stored[1], stored[0]
    record.write_text(json.dumps(stored))
    assert _patch(nnunet, 0)._split(cases)[1] == splits[1][1]
    record.unlink()


def test_every_fold_preprocesses_alike_and_the_run_has_its_splits(nnunet, tmp_path):
    import lightning.pytorch as pl

    pres = []
    for k in (0, 2):
        dm = _patch(nnunet, k)
        dm.trainer = pl.Trainer(default_root_dir=str(tmp_path / f"fold_{k}"), logger=False, accelerator="cpu")
        dm.prepare_data()
        dm.setup("fit")
        assert (tmp_path / f"fold_{k}" / SPLITS_FILE).is_file()
        assert read_splits(tmp_path / f"fold_{k}" / SPLITS_FILE)[k]["val"] == dm.val_cases
        assert dm.fingerprint["train_cases"] == sorted(dm.train_cases + dm.val_cases)  # all folds' cases
        pres.append(dm.preprocessor.to_dict())
    assert pres[0] == pres[1]


def test_users_splits_file_and_bad_fold(nnunet, tmp_path):
    from segzoo.data.io import DataError

    ids = sorted(p.name[: -len(".nii.gz")] for p in (nnunet / "labelsTr").iterdir())
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ids[:4], "val": ids[4:6]}, {"train": ids[2:6], "val": ids[:2]}]))
    dm = _patch(nnunet, 1, num_folds=0, num_test_cases=0, splits_file=str(path))
    train, val, test = dm._split(dm._list_cases())
    assert (train, val, test) == (ids[2:6], ids[:2], [])
    with pytest.raises(DataError, match="fold=5"):
        _patch(nnunet, 5)._split(dm._list_cases())


def test_kits19_folds(tmp_path):
    write_kits19(tmp_path / "kits", cases=5, seed=0)
    dms = [KiTS19DataModule(str(tmp_path / "kits"), num_folds=2, fold=k, num_test_cases=1) for k in range(2)]
    cases = dms[0]._list_cases()
    splits = [dm._split(cases) for dm in dms]
    _assert_partition(splits, [c.case_id for c in cases], splits[0][2])


# ------------------------------------------------------------------------------------------------------------ 2D
def test_chaos_folds_over_all_cases_validate_on_the_held_out_fold(tmp_path):
    import lightning.pytorch as pl

    from segzoo.data.datamodule_2d import CHAOSDataModule
    from segzoo.data.synthetic.chaos import write_chaos

    write_chaos(tmp_path / "chaos", cases=5, seed=0, size="small")
    dms = []
    for k in range(2):
        dm = CHAOSDataModule(str(tmp_path / "chaos"), image_size=(32, 32), train_fraction=1.0, num_folds=2, fold=k)
        dm.trainer = pl.Trainer(default_root_dir=str(tmp_path / f"fold_{k}"), logger=False, accelerator="cpu")
        dm.setup("fit")
        dms.append(dm)
    ids = sorted(dms[0]._case_paths())
    _assert_partition([(d.train_case_ids, d.val_case_ids, d.test_case_ids) for d in dms], ids, [])
    batches = list(dms[1].val_dataloader())
    assert [b["case_id"][0] for b in batches] == dms[1].val_case_ids  # validation = the held-out fold
    assert read_splits(tmp_path / "fold_1" / SPLITS_FILE)[1]["val"] == dms[1].val_case_ids  # recorded in the run
    with pytest.raises(ValueError, match="train_fraction"):
        CHAOSDataModule(str(tmp_path / "chaos"), train_fraction=1.0)  # 1 only with folds


def test_brats_folds_keep_the_plain_test_split(tmp_path):
    from segzoo.data.datamodule_2d import BraTSDataModule
    from segzoo.data.synthetic.brats import write_brats

    write_brats(tmp_path / "brats", cases=5, seed=0, size="small")
    plain = BraTSDataModule(str(tmp_path / "brats"))
    plain.setup("fit")
    folds = [BraTSDataModule(str(tmp_path / "brats"), num_folds=3, fold=k) for k in range(3)]
    for dm in folds:
        dm.setup("fit")
    _assert_partition(
        [(d.train_case_ids, d.val_case_ids, d.test_case_ids) for d in folds],
        sorted(plain._case_paths()),
        plain.test_case_ids,
    )


def test_generic_slice_folds_share_their_statistics(nnunet):
    from segzoo.data.datamodule_2d import SliceDataModule

    dms = [SliceDataModule(str(nnunet), image_size=(32, 32), num_folds=2, fold=k, verify=False) for k in range(2)]
    for dm in dms:
        dm.setup("fit")
    assert dms[0].val_case_ids != dms[1].val_case_ids
    pool = sorted(set(dms[0]._case_paths()) - set(dms[0].test_case_ids))
    assert len(dms[0].test_case_ids) == 1 and dms[0].statistics_case_ids == dms[1].statistics_case_ids == pool
    assert dms[0].preprocessor.to_dict() == dms[1].preprocessor.to_dict()
