"""``segzoo cv``: k-fold cross-validation the nnU-Net way, fold by fold and resumable.

``segzoo cv --config RECIPE --folds 0 1 2 3 4 --trainer.default_root_dir RUN [fit args]`` trains fold k
(``--data.num_folds K --data.fold k``) into ``RUN/fold_k/`` with ``segzoo fit``, then validates its final checkpoint
(``last.ckpt``, as nnU-Net's ``checkpoint_final``: choosing the best epoch on the fold would flatter the fold's score)
writing the out-of-fold predictions ``RUN/fold_k/validation/<case>.npz``, and records the fold as done in
``RUN/fold_k/fold.json``. A rerun skips the done folds and resumes an interrupted one from its ``last.ckpt``. When
the folds are done, ``RUN/cv_metrics.json`` holds the scores of all their out-of-fold predictions together (per case
and mean, on the original grid for the 3D datamodules) and the post-processing decided on them
(:mod:`segzoo.tasks.crossval`); ``segzoo infer --ckpt RUN`` ensembles the folds with that post-processing.

Folds run one after the other on one device; ``--gpus 0 1 2 3`` runs one fold per GPU at a time (a ``segzoo cv``
process per fold with ``CUDA_VISIBLE_DEVICES`` set, its output in ``RUN/fold_k/cv.log``), then scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FOLD_RECORD = "fold.json"
OOF_DIR = "validation"
# set by segzoo cv for each fold; a user's value would silently be overridden
_OWNED = ("--data.num_folds", "--data.fold", "--ckpt_path", "--model.prediction_dir")


def _fail(message: object) -> int:
    print(f"segzoo cv: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _note(message: str) -> None:
    print(f"segzoo cv: {message}", file=sys.stderr, flush=True)


def _pop_option(args: list[str], key: str) -> tuple[list[str], str | None]:
    """``args`` without ``key VALUE`` / ``key=VALUE`` (the last one wins, as jsonargparse's), and that value."""
    out, value, i = [], None, 0
    while i < len(args):
        if args[i] == key and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(key + "="):
            value = args[i].split("=", 1)[1]
        else:
            out.append(args[i])
        i += 1
    return out, value


def fold_args(fit_args: Sequence[str], run: Path, num_folds: int, fold: int) -> list[str]:
    """The ``segzoo fit`` arguments of fold ``fold``: the user's, with the fold's run folder and data split."""
    return [
        *fit_args,
        "--trainer.default_root_dir",
        str(run / f"fold_{fold}"),
        "--data.num_folds",
        str(num_folds),
        "--data.fold",
        str(fold),
    ]


def run_fold(fit_args: Sequence[str], run: Path, num_folds: int, fold: int) -> int:
    """Train (or resume) fold ``fold``, write its out-of-fold predictions and its record; 0 when done."""
    from segzoo.cli import main
    from segzoo.data.splits import SPLITS_FILE, read_splits
    from segzoo.utils import atomic_write_text

    folder = run / f"fold_{fold}"
    record = folder / FOLD_RECORD
    if record.is_file():
        _note(f"fold {fold}: done ({record}); skipped")
        return 0
    args = fold_args(fit_args, run, num_folds, fold)
    last = folder / "checkpoints" / "last.ckpt"
    resume = ["--ckpt_path", str(last)] if last.is_file() else []
    _note(f"fold {fold} of {num_folds}: {'resuming from ' + str(last) if resume else 'training'} into {folder}")
    code = main(["fit", *args, *resume])
    if code:
        return code
    if not last.is_file():
        return _fail(
            f"{last}: fold {fold} wrote no last checkpoint; the recipe needs a segzoo.tasks.RunCheckpoint callback "
            "with save_last: true (the cross-validation scores each fold's final checkpoint)"
        )
    oof = folder / OOF_DIR
    for stale in oof.glob("*.npz") if oof.is_dir() else []:  # an interrupted earlier validation of this fold
        stale.unlink()
    _note(f"fold {fold}: out-of-fold predictions of {last} into {oof}")
    code = main(["validate", *args, "--ckpt_path", str(last), "--model.prediction_dir", str(oof)])
    if code:
        return code
    val = read_splits(folder / SPLITS_FILE)[fold]["val"]
    missing = [c for c in val if not (oof / f"{c}.npz").is_file()]
    if missing:
        _note(f"fold {fold}: warning: no out-of-fold prediction of {missing} (no labelled slice, or not scored)")
    entry = {"fold": fold, "num_folds": num_folds, "checkpoint": f"fold_{fold}/checkpoints/last.ckpt", "val": val}
    atomic_write_text(record, json.dumps({**entry, "missing": missing}, indent=1))
    return 0


def _run_parallel(fit_args: Sequence[str], run: Path, num_folds: int, folds: Sequence[int], gpus: Sequence[int]) -> int:
    """One ``segzoo cv --folds k`` process per GPU at a time (``CUDA_VISIBLE_DEVICES``); 0 when every fold is done."""
    pending = [k for k in folds if not (run / f"fold_{k}" / FOLD_RECORD).is_file()]
    running: dict[int, tuple[int, subprocess.Popen, Any]] = {}
    failed = []
    while pending or running:
        for gpu in [g for g in gpus if g not in running]:
            if not pending:
                break
            k = pending.pop(0)
            log = run / f"fold_{k}" / "cv.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "segzoo", "cv", "--num-folds", str(num_folds), "--folds", str(k)]
            cmd += ["--no-score", *fit_args, "--trainer.default_root_dir", str(run), "--trainer.devices", "1"]
            handle = open(log, "a", encoding="utf-8")  # noqa: SIM115  (closed when the process ends)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
            running[gpu] = (k, subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env), handle)
            _note(f"fold {k}: started on GPU {gpu} (log {log})")
        time.sleep(1.0)
        for gpu, (k, proc, handle) in list(running.items()):
            if proc.poll() is None:
                continue
            handle.close()
            del running[gpu]
            if proc.returncode:
                failed.append(k)
                _note(f"fold {k}: failed on GPU {gpu} (exit {proc.returncode}); see {run / f'fold_{k}' / 'cv.log'}")
            else:
                _note(f"fold {k}: done on GPU {gpu}")
    if failed:
        return _fail(f"folds {failed} failed (logs in {run}/fold_k/cv.log); rerun the same command to resume them")
    return 0


def _recipe_parts(fit_args: Sequence[str]) -> tuple[Any, Any, str | None, bool]:
    """``(metric, post-processing candidate, score_key, tune_postprocess)`` of the recipe, as a fit builds them
    (the metric bound to the dataset's labels)."""
    from segzoo.cli import SegzooCLI

    saved, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI must not see segzoo cv's own command line
    try:
        cli = SegzooCLI(args=list(fit_args), run=False)
    finally:
        sys.argv = saved
    task, dm = cli.model, cli.datamodule
    labels = getattr(dm, "label_names", None)
    if labels and hasattr(getattr(task, "metric", None), "bind_labels"):
        task.metric.bind_labels(labels)
    if task.metric is None:
        raise ValueError("the recipe has no model.metric to score the folds with")
    candidate = getattr(task, "_postprocess_candidate", task.postprocess)
    return task.metric, candidate, task.score_key, bool(task.tune_postprocess)


def write_cv_metrics(fit_args: Sequence[str], run: Path, num_folds: int) -> Path:
    """Score every done fold's out-of-fold predictions together into ``RUN/cv_metrics.json``."""
    from segzoo.checkpoint import callable_config
    from segzoo.data.io import DataError, read_json
    from segzoo.tasks.crossval import score_out_of_fold
    from segzoo.utils import atomic_write_text

    records = {}
    for folder in sorted(run.glob("fold_*")):
        if (folder / FOLD_RECORD).is_file():
            entry = read_json(folder / FOLD_RECORD, "fold record")
            records[int(entry["fold"])] = entry
    if not records:
        raise DataError(f"{run}: no fold is done yet")
    files, seen = [], {}
    for k in sorted(records):
        for f in sorted((run / f"fold_{k}" / OOF_DIR).glob("*.npz")):
            case = f.name[: -len(".npz")]
            if case in seen:
                raise DataError(f"{f}: case '{case}' is also an out-of-fold case of fold {seen[case]}; folds overlap")
            seen[case] = k
            files.append(f)
    metric, candidate, score_key, tune = _recipe_parts(fold_args(fit_args, run, num_folds, min(records)))
    summary = score_out_of_fold(files, metric.score_case, candidate, score_key, tune)
    decided = summary.pop("postprocess")
    out = {
        "num_folds": num_folds,
        "folds": {str(k): {"checkpoint": e["checkpoint"], "val": e["val"]} for k, e in sorted(records.items())},
        "postprocess": callable_config(decided) if decided is not None else None,
        "postprocess_steps": list(getattr(decided, "steps", []) or []) if decided is not None else None,
        **summary,
    }
    path = run / "cv_metrics.json"
    atomic_write_text(path, json.dumps(out, indent=2, default=float))
    return path


def cmd_cv(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo cv",
        description="K-fold cross-validation: trains each fold (--data.num_folds K --data.fold k) into RUN/fold_k/ "
        "with `segzoo fit` (resumable fold by fold), predicts its validation cases with its final checkpoint, then "
        "writes RUN/cv_metrics.json from all the out-of-fold predictions (per case and mean) with the "
        "post-processing decided on them. Every other option is a `segzoo fit` option (--config, --trainer.*, "
        "--model.*, --data.*); --trainer.default_root_dir RUN is required.",
        epilog="Example: segzoo cv --config mss_unet3d --data.data_dir DATASET --trainer.default_root_dir runs/cv "
        "--folds 0 1 2 3 4; then segzoo infer --ckpt runs/cv --input IMAGES --output OUT (the ensemble of the folds)",
        allow_abbrev=False,
    )
    p.add_argument("--folds", type=int, nargs="+", default=None, help="the folds to run (default: all)")
    p.add_argument("--num-folds", type=int, default=5, help="K, the number of folds (default 5, as nnU-Net)")
    p.add_argument("--gpus", type=int, nargs="+", default=None, help="GPU indices: one fold per GPU at a time")
    p.add_argument("--no-score", dest="score", action="store_false", help="train the folds only (no cv_metrics.json)")
    args, fit_args = p.parse_known_args(argv)
    fit_args, root = _pop_option(list(fit_args), "--trainer.default_root_dir")
    if root is None:
        return _fail("--trainer.default_root_dir RUN is required: the folds go to RUN/fold_k/")
    owned = [a.split("=")[0] for a in fit_args if a.split("=")[0] in _OWNED]
    if owned:
        return _fail(f"{owned[0]}: segzoo cv sets it for each fold; leave it out (--folds picks the folds)")
    if args.num_folds < 2:
        return _fail(f"--num-folds {args.num_folds}: expected at least 2 folds")
    folds = list(range(args.num_folds)) if args.folds is None else list(dict.fromkeys(args.folds))
    bad = [k for k in folds if not 0 <= k < args.num_folds]
    if bad:
        return _fail(f"--folds {bad}: expected folds in 0..{args.num_folds - 1} (--num-folds {args.num_folds})")
    run = Path(root)
    if args.gpus:
        code = _run_parallel(fit_args, run, args.num_folds, folds, args.gpus)
    else:
        code = 0
        for k in folds:
            code = run_fold(fit_args, run, args.num_folds, k)
            if code:
                break
    if code or not args.score:
        return code
    from segzoo.data.io import DataError

    try:
        path = write_cv_metrics(fit_args, run, args.num_folds)
    except (DataError, KeyError, ValueError) as e:
        return _fail(e.args[0] if e.args else e)
    result = json.loads(path.read_text(encoding="utf-8"))
    means = result["mean"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in list(means.items())[:6] if isinstance(v, float))
    steps = result["postprocess_steps"]
    post = "none" if steps is None else f"{', '.join(steps) or 'no step kept'}"
    print(
        f"segzoo cv: folds {sorted(map(int, result['folds']))} of {args.num_folds}, {len(result['cases'])} out-of-fold "
        f"cases ({result['scored_on']}): {shown}; post-processing {post} -> {path}"
    )
    return 0


CV_COMMANDS = {"cv": (cmd_cv, "k-fold cross-validation: every fold into RUN/fold_k/, then RUN/cv_metrics.json")}
