"""Why a class dies: the pull each loss puts on the tumour logits of a trained net (issue 25 item 1).

    python benchmarks/kits19_loss_forces.py --run RUN [--batches 8]     # a trained net's logits
    python benchmarks/kits19_loss_forces.py --cache DATA_preprocessed     # controlled logits, no net

Draws batches of two demo-size patches (one centred on a tumour voxel, one anywhere) from preprocessed training
cases and reports per loss, on deep-supervision logits (``--run``: ``RUN/checkpoints/last.ckpt`` on its run's cases;
``--cache``: a net that has found the kidney, calls the tumour kidney and gives it probability ``p`` = 1e-2, 1e-3,
1e-4, the state of a dead class):

- ``pull``: the summed negative gradient of the loss with respect to the tumour logit over tumour voxels (what raises
  the tumour score where it belongs), as a fraction of the gradient's L1 norm over all logits and voxels;
- the net's tumour probability on tumour voxels (median, 90th percentile).

A softmax output whose tumour probability has saturated near 0 gets almost no pull from a linear (1 - Dice) term:
d(Dice)/d(logit) carries the factor p(1 - p). A cross-entropy term pulls with (1 - p) per voxel but its mean over
all voxels gives the tumour about its voxel share; a logarithmic Dice term (-ln Dice)^gamma divides by Dice and so
keeps pulling.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def losses() -> dict:
    from monai.losses import DiceCELoss

    from segzoo.losses import DeepSupervisionLoss, ExpLogLoss

    w = torch.tensor([1.0, 1.0, 3.0])
    return {
        "DiceCE batch (demo recipe)": DiceCELoss(to_onehot_y=True, softmax=True, batch=True),
        "DiceCE batch, no background Dice": DiceCELoss(
            to_onehot_y=True, softmax=True, batch=True, include_background=False
        ),
        "DiceCE batch, class weights 1/1/3": DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=w),
        "ExpLog 0.8/0.2, gamma 0.3, weights 1/1/3 (earlier recipe)": ExpLogLoss(class_weights=[1.0, 1.0, 3.0]),
        "log-Dice + CE (ExpLog gamma 1, w 1/1)": ExpLogLoss(w_dice=1.0, w_ce=1.0, gamma_dice=1.0, gamma_ce=1.0),
    }, DeepSupervisionLoss


def patches(cache: Path, cases: list[str], size: tuple[int, int, int], n: int, rng: np.random.Generator):
    """``n`` batches of two patches: one centred on a tumour voxel, one uniformly placed."""
    for _ in range(n):
        imgs, segs = [], []
        for centred in (True, False):
            case = cases[int(rng.integers(len(cases)))]
            img = np.load(cache / f"{case}_img.npy", mmap_mode="r")
            seg = np.load(cache / f"{case}_seg.npy", mmap_mode="r")
            shape = seg.shape[-3:]
            if centred and (seg == 2).any():
                vox = np.argwhere(np.asarray(seg).reshape(shape) == 2)
                c = vox[int(rng.integers(len(vox)))]
            else:
                c = [int(rng.integers(s)) for s in shape]
            lo = [int(np.clip(ci - p // 2, 0, max(s - p, 0))) for ci, p, s in zip(c, size, shape)]
            sl = tuple(slice(a, a + p) for a, p in zip(lo, size))
            pi = np.zeros((1, *size), np.float32)
            ps = np.zeros((1, *size), np.int64)
            im = np.asarray(img).reshape(-1, *shape)[(slice(None), *sl)]
            sg = np.asarray(seg).reshape(1, *shape)[(slice(None), *sl)]
            pi[(slice(None), *(slice(0, d) for d in im.shape[1:]))] = im
            ps[(slice(None), *(slice(0, d) for d in sg.shape[1:]))] = sg
            imgs.append(pi)
            segs.append(ps)
        yield torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(segs))


def pull(loss, ds_cls, outs: list[torch.Tensor], y: torch.Tensor) -> float:
    """Summed negative gradient on the tumour logit over tumour voxels / the L1 norm of the whole gradient."""
    g = torch.autograd.grad(ds_cls(loss)(outs, y), outs)[0]  # full resolution
    return float(-g[:, 2][y[:, 0] == 2].sum() / g.abs().sum())


def controlled(cache: Path, batches: int, seed: int) -> dict:
    """Pulls on logits that put probability 0.9 on the right class, except tumour voxels called kidney with tumour
    probability ``p``; the deep-supervision outputs are those logits at 1/2 and 1/4 in-plane (and 1/2 across)."""
    table, ds_cls = losses()
    cases = sorted(q.name[: -len("_seg.npy")] for q in cache.glob("*_seg.npy"))
    data = list(patches(cache, cases, (24, 96, 96), batches, np.random.default_rng(seed)))
    res = {"tumour_voxel_share": [float((y == 2).float().mean()) for _, y in data], "pull": {}}
    for eps in (1e-2, 1e-3, 1e-4):
        row = {}
        for name, loss in table.items():
            vals = []
            for _, y in data:
                lab = y[:, 0]
                prob = torch.empty((lab.shape[0], 3, *lab.shape[1:]))
                prob[:, 0], prob[:, 1], prob[:, 2] = 0.9, 0.1 - eps, eps
                kid = lab >= 1
                prob[:, 0][kid], prob[:, 1][kid] = 0.1 - eps, 0.9
                z = torch.log(prob)
                outs = [z.requires_grad_(True)] + [
                    torch.nn.functional.interpolate(z.detach(), scale_factor=f).requires_grad_(True)
                    for f in ((1.0, 0.5, 0.5), (0.5, 0.25, 0.25))
                ]
                vals.append(pull(loss, ds_cls, outs, y))
            row[name] = float(np.mean(vals))
        res["pull"][f"p={eps:g}"] = row
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a segzoo fit run folder")
    p.add_argument("--cache", help="a preprocessed KiTS19 folder (controlled logits)")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cache:
        print(json.dumps(controlled(Path(args.cache), args.batches, args.seed), indent=1))
        return 0
    from segzoo.checkpoint import load_checkpoint

    run = Path(args.run)
    cfg = __import__("yaml").safe_load((run / "config.yaml").read_text())
    data_dir = Path(cfg["data"]["init_args"]["data_dir"])
    cache = Path(cfg["data"]["init_args"].get("cache_dir") or data_dir.parent / f"{data_dir.name}_preprocessed")
    size = tuple(cfg["data"]["init_args"]["patch_size"])
    cases = sorted(p.name[: -len("_seg.npy")] for p in cache.glob("*_seg.npy"))
    net = load_checkpoint(run / "checkpoints" / "last.ckpt").net.train()  # train mode: the deep-supervision list
    table, ds_cls = losses()
    rng = np.random.default_rng(args.seed)
    pulls = {k: [] for k in table}
    p_tum = []
    for x, y in patches(cache, cases, size, args.batches, rng):
        with torch.no_grad():
            outs = net(x)
        outs = [o.detach().requires_grad_(True) for o in (outs if isinstance(outs, list | tuple) else [outs])]
        prob = torch.softmax(outs[0].detach(), 1)[:, 2][y[:, 0] == 2]
        if prob.numel():
            p_tum.append(prob.numpy())
        for name, loss in table.items():
            pulls[name].append(pull(loss, ds_cls, outs, y))
    p_all = np.concatenate(p_tum) if p_tum else np.zeros(1)
    res = {
        "run": str(run),
        "tumour_prob_on_tumour": {"median": float(np.median(p_all)), "p90": float(np.percentile(p_all, 90))},
        "pull": {k: float(np.mean(v)) for k, v in pulls.items()},
    }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
