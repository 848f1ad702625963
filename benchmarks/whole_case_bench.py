"""Whole-case inference the way users meet it: each `segzoo infer` switch vs the exact full sliding window and peers.

A trained checkpoint (default: the demo's, ``runs/demo/run/checkpoints/last.ckpt`` from ``make demo``) is loaded with
``segzoo.inference.predict.load_predictor`` (net, preprocessing, window size). Cases, each preprocessed as
``segzoo infer`` does:

- ``heldout_*``: the demo's held-out synthetic cases (``runs/demo/heldout``, a seed never used in training);
- ``large``: a real-size synthetic CT from the KiTS19 generator's large mode (512x512 in-plane at ~0.78 mm, ~3 mm
  slices) with ``--large-slices`` slices (default 200; the generator's large mode draws 60-100, so the benchmark
  widens its slice-count range; the anatomy is drawn in millimetres, so the body runs through every slice).

Methods (overlap 0.5, Gaussian blending, ``sw_batch_size`` 2, softmax probabilities averaged over the flips):

- ``full``: ``SlidingWindowTTAInferer`` on the whole case, no crop: the exact full sliding-window result every Dice
  is measured against;
- ``monai_8pass``: MONAI's ``sliding_window_inference`` once per flip of the whole volume (the naive peer);
- ``nnunet_v2``: nnU-Net v2's ``nnUNetPredictor.predict_sliding_window_return_logits`` with the same net, window,
  step 0.5, Gaussian, mirroring on all axes (it averages logits);
- ``crop_exact`` (the default of ``segzoo infer``), ``crop_regrid``, ``coarse_to_fine`` (with the exact crop),
  ``coarse_to_fine_regrid`` (windows re-placed over each coarse box), ``tta_inplane`` and ``tta_none`` (with the
  exact crop), ``amp`` and ``coarse_to_fine_amp`` (bf16 autocast; only on a CPU with bf16 kernels), ``onnxruntime``
  and ``openvino`` (exact crop, the exported net run by that runtime). The coarse-to-fine paths keep only the coarse
  foreground the checkpoint's post-processing keeps (``coarse_select``), as ``segzoo infer`` does.

Flips: the held-out cases run every method with its own flips (8 unless the method says otherwise). The large case
runs every method with ONE flip (the identity) and its 8-flip time is extrapolated as ``8 x`` the measured time
(for ``coarse_to_fine``: ``coarse pass + 8 x (rest)``; the coarse pass never mirrors); on a CPU the default
``max_batch`` runs one flip per forward pass, so the cost is linear in the number of flips, which the held-out rows
check (``tta_inplane`` / ``crop_exact`` time). Its Dice rows are those of the one-flip results. The large case runs
only ``full`` and ``--large-methods`` (default: the MONAI peer and the crop / coarse-to-fine paths; the backends, bf16
and the TTA choices cost the same per window there as on the held-out cases, where they are measured).

Reported per case and method: wall time (one call after a warm-up of the net; ``--repeats`` for the median), the
peak RSS above the RSS before the call (sampled every 2 ms, in-process, glibc's default allocator: memory freed by an
earlier method and kept by the allocator can hide part of a later one's peak), kidney (label > 0) and tumour
(label 2) Dice of the argmax against ``full`` (raw, and both post-processed with the checkpoint's validated
post-processing, which is what ``segzoo infer`` writes), windows run, and the achieved GFLOP/s of the net's forward passes
(FLOPs of one window counted by ``torch.utils.flop_counter`` x windows x flips / time) against the CPU's fp32 peak
(cores x base clock x 64: two AVX-512 FMA units; 32 with AVX2; ``--peak-gflops`` overrides).

Writes ``<out>/whole_case_<device>.json`` and ``.md``. Usage:
``python benchmarks/whole_case_bench.py [--ckpt CKPT] [--heldout DIR] [--cases 2] [--large-slices 200]``;
``--quick`` is a smoke run (a tiny untrained net, small cases, seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_bench import _cpu_bf16, _cpu_name, naive_tta  # noqa: E402
from train_step import PeakRSS  # noqa: E402

from segzoo.inference.sliding_window import SlidingWindowTTAInferer, flip_combinations  # noqa: E402
from segzoo.utils import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
EXACT = ("crop_exact", "coarse_to_fine_inside", "tta_all")  # paths that must equal `full` (Dice within 0.001)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def large_case(
    min_slices: int, seed: int, thickness: tuple[float, float] = (1.5, 2.0)
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(image, label, spacing)`` of a real-size synthetic abdominal CT: the KiTS19 generator's large mode (512 x 512
    pixels over a field of view set to the body, 320-480 mm of slices) with the "train" regime at ``thickness`` mm
    slices; the first seed from ``seed`` on whose case has at least ``min_slices`` slices (read from the drawn
    geometry before the case is rendered)."""
    import dataclasses

    from segzoo.data.geometry import spacing_from_affine
    from segzoo.data.synthetic import kits19 as gen

    regime = dataclasses.replace(gen.REGIMES["train"], slice_thickness=thickness)
    for s in range(seed, seed + 1000):
        if gen._geometry(np.random.default_rng(s), regime, "large")[0][0] >= min_slices:
            break
    else:
        raise ValueError(
            f"no large case with >= {min_slices} slices of {thickness} mm among seeds {seed}..{seed + 999}"
        )
    image, label, affine = gen.synth_kits19_case(np.random.default_rng(s), size="large", regime=regime)
    return image, label, spacing_from_affine(affine)


def window_gflop(net, in_channels: int, roi) -> float:
    """GFLOP of one forward pass of ``net`` on one window (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, in_channels, *roi))
    return counter.get_total_flops() / 1e9


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak of the cores torch uses: threads x base clock x FLOP/cycle (2 FMA units x vector width x 2)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    ghz = (max(mhz) if mhz else 2000.0) / 1000
    per_cycle = 64 if "avx512f" in text else 32 if "avx2" in text else 16
    threads = torch.get_num_threads()
    return threads * ghz * per_cycle, f"{threads} cores x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle"


class NNUNetPeer:
    """nnU-Net v2's sliding window (``predict_sliding_window_return_logits``) with the same net, window and step."""

    def __init__(self, net, roi, classes: int, mirror_axes) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        p = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=bool(mirror_axes),
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        p.network = net
        p.allowed_mirroring_axes = tuple(mirror_axes or ())
        p.configuration_manager = SimpleNamespace(patch_size=list(roi))
        p.label_manager = SimpleNamespace(num_segmentation_heads=classes)
        self.predictor = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor.predict_sliding_window_return_logits(x[0])[None]


def build_methods(
    net, roi, classes, in_channels, sw_batch_size, one_flip: bool, quick: bool, only=None, post=None
) -> dict:
    """``{name: (callable(x) -> (1, K, *spatial) scores, inferer or None, flips)}``; ``only``: names to keep;
    ``post``: the checkpoint's post-processing, which the coarse-to-fine paths apply to their coarse pass as
    ``segzoo infer`` does."""
    all_axes = None if one_flip else (0, 1, 2)
    common = dict(sw_batch_size=sw_batch_size, overlap=0.5, mode="gaussian")

    def inferer(**kw):
        return SlidingWindowTTAInferer(roi, **{**common, "mirror_axes": all_axes, **kw})

    methods: dict = {}

    def add(name, fn, inf=None, axes=all_axes):
        if only is None or name in only or name == "full":
            methods[name] = (fn, inf, len(flip_combinations(axes)))

    full = inferer()
    add("full", lambda x: full(x, net), full)
    add("monai_8pass", lambda x: naive_tta(x, net, roi, sw_batch_size, mirror_axes=all_axes or ()))
    with contextlib.suppress(ImportError):
        peer = NNUNetPeer(net, roi, classes, all_axes)
        add("nnunet_v2", lambda x: peer(x))
    exact = inferer(crop=True)
    add("crop_exact", lambda x: exact(x, net), exact)
    regrid = inferer(crop=True, crop_grid="crop")
    add("crop_regrid", lambda x: regrid(x, net), regrid)
    c2f = inferer(crop=True, coarse_to_fine=True, coarse_select=post)
    add("coarse_to_fine", lambda x: c2f(x, net), c2f)
    c2f_regrid = inferer(crop=True, crop_grid="crop", coarse_to_fine=True, coarse_select=post)
    add("coarse_to_fine_regrid", lambda x: c2f_regrid(x, net), c2f_regrid)
    if not one_flip:
        inplane = inferer(crop=True, mirror_axes=(1, 2))
        add("tta_inplane", lambda x: inplane(x, net), inplane, (1, 2))
        none = inferer(crop=True, mirror_axes=None)
        add("tta_none", lambda x: none(x, net), none, None)
    runners = [(net, False)]
    if _cpu_bf16():
        runners.append((net, True))
        amp = inferer(crop=True, amp=True)
        add("amp", lambda x: amp(x, net), amp)
        c2f_amp = inferer(crop=True, coarse_to_fine=True, coarse_select=post, amp=True)
        add("coarse_to_fine_amp", lambda x: c2f_amp(x, net), c2f_amp)
    from segzoo.inference.backends import backend_net

    for backend in ("onnxruntime", "openvino"):
        if only is not None and backend not in only:
            continue
        try:
            run = backend_net(net, backend, (1, in_channels, *roi), out_channels=classes)
        except ImportError:
            continue
        inf = inferer(crop=True)
        add(backend, lambda x, inf=inf, run=run: inf(x, run), inf)
        runners.append((run, False))
    # warm-up of every way the net runs, at both window batch sizes (oneDNN / runtime set-up is not timed)
    with torch.inference_mode():
        for run, bf16 in runners:
            for n in sorted({1, sw_batch_size}):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    run(torch.zeros(n, in_channels, *roi))
    return methods


def run_case(name, x, methods, gflop_per_window, peak_gflops, repeats, one_flip, truth=None, post=None) -> dict:
    rows: dict = {}
    labels: dict = {}
    for method, (fn, inf, flips) in methods.items():
        times, cpu, peak = [], [], 0
        for _ in range(repeats):
            with PeakRSS() as sampler:
                t, c = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    out = fn(x)
                dt = time.perf_counter() - t
                cpu.append(time.process_time() - c)
            times.append(dt)
            peak = max(peak, sampler.delta)
        labels[method] = out[0].argmax(0).numpy().astype(np.uint8)
        del out
        row = {
            "time_s": statistics.median(times),
            "times_s": times,
            "cpu_s": statistics.median(cpu),
            "peak_rss_mib": peak / 2**20,
            "flips": flips,
        }
        if inf is not None and inf.last_stats:
            st = inf.last_stats[0]
            row["windows_run"], row["windows_total"] = st["windows_run"], st["windows_total"]
            if "body_box" in st:
                row["body_box"] = [(b.start, b.stop) for b in st["body_box"]]
                row["boxes_predicted"] = len(st["boxes"])
            coarse_s = st.get("coarse_seconds", 0.0)
            row["coarse_s"] = coarse_s
            row["coarse_windows"] = st.get("coarse_windows", 0)
            forward = (row["windows_run"] * flips + row["coarse_windows"]) * gflop_per_window
            row["gflops_achieved"] = forward / row["time_s"]
            row["fraction_of_peak"] = row["gflops_achieved"] / peak_gflops
        if one_flip:
            coarse_s = row.get("coarse_s", 0.0)
            row["time_8flip_extrapolated_s"] = coarse_s + 8 * (row["time_s"] - coarse_s)
        print(f"[{name}] {method}: {row['time_s']:.2f} s", flush=True)
        rows[method] = row
    ref = labels["full"]
    theirs = None if post is None else post(ref)
    from segzoo.inference.crop import body_box

    body = [(b.start, b.stop) for b in body_box(x[0], margin=4)]  # the inferer's default crop (margin 4)
    for method, row in rows.items():
        row["dice_kidney_vs_full"] = dice(labels[method] > 0, ref > 0)
        row["dice_tumour_vs_full"] = dice(labels[method] == 2, ref == 2)
        if truth is not None:  # the synthetic case's own label, on the preprocessed grid
            row["dice_kidney_vs_truth"] = dice(labels[method] > 0, truth > 0)
            row["dice_tumour_vs_truth"] = dice(labels[method] == 2, truth == 2)
        row["label_voxels_differing"] = int((labels[method] != ref).sum())
        if post is not None:  # what `segzoo infer` writes: each path's labels post-processed, against full's
            mine = post(labels[method])
            row["dice_kidney_vs_full_post"] = dice(mine > 0, theirs > 0)
            row["dice_tumour_vs_full_post"] = dice(mine == 2, theirs == 2)
            if truth is not None:
                row["dice_kidney_vs_truth_post"] = dice(mine > 0, truth > 0)
                row["dice_tumour_vs_truth_post"] = dice(mine == 2, truth == 2)
        if "body_box" in row:  # where the crop predicts: the exact paths must agree with `full` voxel for voxel
            box = tuple(slice(a, b) for a, b in row["body_box"])
            row["label_voxels_differing_in_body_box"] = int((labels[method][box] != ref[box]).sum())
            row["dice_kidney_vs_full_in_body_box"] = dice(labels[method][box] > 0, ref[box] > 0)
            row["dice_tumour_vs_full_in_body_box"] = dice(labels[method][box] == 2, ref[box] == 2)

    key = "time_8flip_extrapolated_s" if one_flip else "time_s"
    peer = rows.get("monai_8pass", rows["full"])  # `full` does the peer's work (same windows x flips)
    for row in rows.values():
        row["time_over_monai_8pass"] = row[key] / peer[key]
        # process CPU time (all threads): robust when other jobs share the cores; the same flips scaling
        row["cpu_over_monai_8pass"] = row["cpu_s"] / peer["cpu_s"]
    return {
        "shape": list(x.shape),
        "one_flip_measured": one_flip,
        "rows": rows,
        "foreground_voxels": int((ref > 0).sum()),
        "body_box": body,
        "full_foreground_outside_body_box": int((ref > 0).sum() - (ref[tuple(slice(a, b) for a, b in body)] > 0).sum()),
        "truth_foreground_outside_body_box": None
        if truth is None
        else int((truth > 0).sum() - (truth[tuple(slice(a, b) for a, b in body)] > 0).sum()),
    }


def window_counts(shape, roi, box) -> dict[str, int]:
    """Windows of MONAI's grid (overlap 0.5) for the whole case, those touching ``box`` (``--crop exact``) and the
    grid over ``box`` grown to the window size (``--crop regrid``): what the inferer runs, without running it."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from segzoo.inference.crop import fit_box, intersects

    def grid(size):
        size = tuple(max(n, r) for n, r in zip(size, roi))
        return dense_patch_slices(size, roi, _get_scan_interval(size, roi, len(roi), (0.5,) * len(roi)))

    whole = grid(shape)
    fitted = fit_box(box, roi, shape)
    return {
        "full": len(whole),
        "crop_exact": sum(intersects(w, box) for w in whole),
        "crop_regrid": len(grid([s.stop - s.start for s in fitted])),
    }


def paper_net_rows(image: np.ndarray, spacing, pre, repeats: int = 2) -> dict:
    """The paper's net (``mss_unet3d``, widths 30-320, untrained) at the paper's spacing and window on the large case:
    seconds per window measured on ``repeats`` windows, whole-case times extrapolated from the window counts."""
    import segzoo
    from segzoo.data.preprocessor import PAPER_TARGET_SPACING, CTPreprocessor
    from segzoo.inference.crop import body_box

    paper = CTPreprocessor(pre.clip_low, pre.clip_high, pre.mean, pre.std, PAPER_TARGET_SPACING)
    x = torch.from_numpy(paper.preprocess(image, spacing))
    roi = (48, 192, 192)
    box = body_box(x, margin=4)
    counts = window_counts(tuple(x.shape[1:]), roi, box)
    del x
    torch.manual_seed(0)
    net = segzoo.create_net("mss_unet3d").eval()
    gflop = window_gflop(net, 1, roi)
    window = torch.randn(1, 1, *roi)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first call sets up oneDNN: not counted
            t = time.perf_counter()
            net(window)
            times.append(time.perf_counter() - t)
    per_window = statistics.median(times[1:])
    return {
        "roi_size": list(roi),
        "preprocessed_shape": list(paper.new_shape(image.shape, spacing)),
        "window_gflop": gflop,
        "seconds_per_window": per_window,
        "window_times_s": times[1:],
        "windows": counts,
        "hours_8flip": {k: 8 * n * per_window / 3600 for k, n in counts.items()},
        "hours_1flip": {k: n * per_window / 3600 for k, n in counts.items()},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", type=Path, default=ROOT / "runs/demo/run/checkpoints/last.ckpt")
    p.add_argument("--heldout", type=Path, default=ROOT / "runs/demo/heldout")
    p.add_argument("--cases", type=int, default=2, help="held-out cases to run (the first N)")
    p.add_argument("--large-slices", type=int, default=200, help="slices of the real-size CT (0: skip it)")
    p.add_argument("--large-seed", type=int, default=20_000)
    p.add_argument(
        "--large-methods",
        nargs="+",
        default=["monai_8pass", "crop_exact", "crop_regrid", "coarse_to_fine", "coarse_to_fine_regrid"],
        help="methods run on the large case besides `full` (the rest are measured on the held-out cases; "
        "`all` for every one)",
    )
    p.add_argument("--heldout-methods", nargs="+", default=["all"], help="methods run on the held-out cases")
    p.add_argument("--sw-batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-gflops", type=float, default=None, help="the CPU's fp32 peak (default: estimated)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny untrained net, small cases")
    p.add_argument(
        "--keep-cases-from",
        type=Path,
        default=None,
        help="an earlier whole_case json: its cases not measured in this run are kept in the tables, marked with "
        "that run's date and checkpoint",
    )
    p.add_argument(
        "--paper-net", action="store_true", help="also time the paper's net on windows of the large case, extrapolated"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from segzoo.data.geometry import spacing_from_affine
    from segzoo.data.io import load_nifti

    cases: dict[str, torch.Tensor] = {}
    truths: dict[str, np.ndarray] = {}
    paper = None
    if args.quick:
        import segzoo
        from segzoo.data.preprocessor import CTPreprocessor
        from segzoo.inference.postprocess import KiTSPostprocess

        torch.manual_seed(0)
        net = segzoo.create_net("mss_unet3d_small", base_features=4, max_features=16).eval()
        roi, pre = (8, 32, 32), CTPreprocessor(-50, 300, 100, 60, (6.0, 6.0, 6.0))
        image, label, spacing = large_case(64, 0, thickness=(5.0, 5.0))
        cases["large"] = torch.from_numpy(pre.preprocess(image, spacing))[None]
        truths["large"] = pre.preprocess_label(label, spacing)[0]
        cases["heldout_quick"] = cases["large"][:, :, :, 8:56, 8:56].clone()
        ckpt = "quick (untrained mss_unet3d_small, widths 4-16)"
        post = KiTSPostprocess(keep_largest=True)
    else:
        from segzoo.inference.predict import load_predictor

        if not args.ckpt.exists():
            p.error(f"--ckpt {args.ckpt}: not found; run `make demo` first (or pass a segzoo checkpoint)")
        predictor = load_predictor(args.ckpt, tta="none")
        net, pre, roi = predictor.net, predictor.preprocessor, predictor.inferer.roi_size
        post = predictor.postprocess  # the checkpoint's validated decision
        ckpt = str(args.ckpt)
        for case in sorted(args.heldout.glob("case_*"))[: args.cases]:
            image, affine = load_nifti(case / "imaging.nii.gz", dtype=np.float32)
            cases[f"heldout_{case.name}"] = torch.from_numpy(pre.preprocess(image, spacing_from_affine(affine)))[None]
            if (case / "segmentation.nii.gz").exists():
                label, _ = load_nifti(case / "segmentation.nii.gz", dtype=np.uint8)
                truths[f"heldout_{case.name}"] = pre.preprocess_label(label, spacing_from_affine(affine))[0]
        if args.large_slices:
            image, label, spacing = large_case(args.large_slices, args.large_seed)
            cases["large"] = torch.from_numpy(pre.preprocess(image, spacing))[None]
            truths["large"] = pre.preprocess_label(label, spacing)[0]
            paper = paper_net_rows(image, spacing, pre) if args.paper_net else None
            del image
    config = getattr(net, "init_config", {}).get("init_args", {})
    classes, in_channels = int(config.get("out_channels", 3)), int(config.get("in_channels", 1))
    gflop = window_gflop(net, in_channels, roi)
    peak, peak_how = (args.peak_gflops, "given") if args.peak_gflops else cpu_peak_gflops()
    with torch.inference_mode():  # warm-up of the net at the batch size the methods use
        net(torch.zeros(args.sw_batch_size, in_channels, *roi))
    first = next(iter(cases.values()))
    warm = SlidingWindowTTAInferer(roi, sw_batch_size=args.sw_batch_size, overlap=0.5, mirror_axes=None)
    warm(first, net)  # one-flip pass over the first case: oneDNN set-up for every window batch shape
    results: dict = {}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "device_name": _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
        "checkpoint": ckpt,
        "roi_size": list(roi),
        "overlap": 0.5,
        "sw_batch_size": args.sw_batch_size,
        "window_gflop": gflop,
        "cpu_peak_gflops_fp32": peak,
        "cpu_peak_how": peak_how,
        "cases": results,
        "postprocess": repr(post),
        "paper_net_large": paper,
    }
    stem = "whole_case_cpu"
    if args.keep_cases_from is not None:
        earlier = json.loads(args.keep_cases_from.read_text())
        for name, case in earlier["cases"].items():
            if name not in cases:
                origin = case.get("from_run") or {k: earlier[k] for k in ("date", "checkpoint")}
                results[name] = {**case, "from_run": origin}
    for name, x in cases.items():
        one_flip = name == "large"
        chosen = args.large_methods if one_flip else args.heldout_methods
        only = None if "all" in chosen else set(chosen)
        methods = build_methods(net, roi, classes, in_channels, args.sw_batch_size, one_flip, args.quick, only, post)
        results[name] = run_case(name, x, methods, gflop, peak, args.repeats, one_flip, truths.get(name), post)
        # after every case, so a run cut short keeps what it measured
        atomic_write_text(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return result


LABELS = {
    "full": "segzoo, whole case, no crop (reference)",
    "monai_8pass": "MONAI sliding_window_inference once per flip (peer)",
    "nnunet_v2": "nnU-Net v2 predict_sliding_window_return_logits (peer)",
    "crop_exact": "segzoo infer default: `--crop exact`",
    "crop_regrid": "`--crop regrid`",
    "coarse_to_fine": "`--crop exact --coarse-to-fine`",
    "coarse_to_fine_regrid": "`--crop regrid --coarse-to-fine`",
    "tta_inplane": "`--crop exact --tta inplane` (4 flips)",
    "tta_none": "`--crop exact --tta none`",
    "amp": "`--crop exact --amp` (bf16 autocast)",
    "coarse_to_fine_amp": "`--crop exact --coarse-to-fine --amp` (bf16 autocast)",
    "onnxruntime": "`--crop exact --backend onnxruntime`",
    "openvino": "`--crop exact --backend openvino`",
}


def markdown(result: dict) -> str:
    md = [
        "# Whole-case inference as `segzoo infer` runs it (cpu)",
        "",
        f"{result['date']}, {result['device_name']}, torch {result['torch']}, {result['threads']} threads, load "
        f"average {result['load_average_at_start']:.1f} at start (shared machine: times are noisy, ratios from one "
        f"run). Checkpoint `{result['checkpoint']}`, roi {result['roi_size']}, overlap 0.5, Gaussian, sw_batch_size "
        f"{result['sw_batch_size']}; one window = {result['window_gflop']:.2f} GFLOP; CPU fp32 peak "
        f"{result['cpu_peak_gflops_fp32']:.0f} GFLOP/s ({result['cpu_peak_how']}).",
        "",
    ]
    for name, case in result["cases"].items():
        one = case["one_flip_measured"]
        truth = any("dice_kidney_vs_truth" in r for r in case["rows"].values())
        posted = any("dice_kidney_vs_full_post" in r for r in case["rows"].values())
        md += [
            f"**{name}**: preprocessed {case['shape'][2:]}, {case['foreground_voxels']} foreground voxels in the "
            f"reference"
            + (
                f", body box {[b - a for a, b in case['body_box']]} ({case['full_foreground_outside_body_box']} of "
                "the reference's foreground voxels outside it"
                + (
                    f", {case['truth_foreground_outside_body_box']} of the truth's"
                    if case.get("truth_foreground_outside_body_box") is not None
                    else ""
                )
                + ")"
                if "body_box" in case
                else ""
            )
            + (
                f" [kept from the run of {case['from_run']['date']} with checkpoint `{case['from_run']['checkpoint']}`]"
                if case.get("from_run")
                else ""
            )
            + (
                "; measured with one flip, 8-flip time = 8 x measured (coarse pass once), Dice of the one-flip results, "
                "CPU-time ratio of the one-flip runs."
                if one
                else "; every method run with its own flips."
            ),
            "",
            "| method | time (s) | "
            + ("8-flip time (s, extrapolated) | " if one else "")
            + "time / MONAI 8-pass | CPU time / MONAI 8-pass | peak RSS (MiB) | windows run / grid | kidney Dice vs "
            "full | tumour Dice vs full | label voxels differing from full (in the body box) | "
            + ("kidney / tumour Dice vs truth | " if truth else "")
            + ("post-processed: kidney / tumour Dice vs full | " if posted else "")
            + ("post-processed: kidney / tumour Dice vs truth | " if posted and truth else "")
            + "GFLOP/s (% of peak) |",
            "|---|---|"
            + ("---|" if one else "")
            + "---|---|---|---|---|---|---|"
            + ("---|" if truth else "")
            + ("---|" if posted else "")
            + ("---|" if posted and truth else "")
            + "---|",
        ]
        for method, r in case["rows"].items():
            windows = f"{r['windows_run']}/{r['windows_total']}" if "windows_run" in r else "-"
            if r.get("coarse_windows"):
                windows += f" + {r['coarse_windows']} coarse"
            gf = f"{r['gflops_achieved']:.0f} ({100 * r['fraction_of_peak']:.0f}%)" if "gflops_achieved" in r else "-"
            md.append(
                f"| {LABELS.get(method, method)} | {r['time_s']:.2f} | "
                + (f"{r['time_8flip_extrapolated_s']:.1f} | " if one else "")
                + f"{r['time_over_monai_8pass']:.2f} | {r['cpu_over_monai_8pass']:.2f} | {r['peak_rss_mib']:.0f} | "
                f"{windows} | "
                f"{r['dice_kidney_vs_full']:.4f} | {r['dice_tumour_vs_full']:.4f} | "
                f"{r['label_voxels_differing']}"
                + (f" ({r['label_voxels_differing_in_body_box']})" if "label_voxels_differing_in_body_box" in r else "")
                + " | "
                + (f"{r['dice_kidney_vs_truth']:.3f} / {r['dice_tumour_vs_truth']:.3f} | " if truth else "")
                + (
                    f"{r['dice_kidney_vs_full_post']:.4f} / {r['dice_tumour_vs_full_post']:.4f} | "
                    if "dice_kidney_vs_full_post" in r
                    else ("- | " if posted else "")
                )
                + (
                    f"{r['dice_kidney_vs_truth_post']:.3f} / {r['dice_tumour_vs_truth_post']:.3f} | "
                    if "dice_kidney_vs_truth_post" in r
                    else ("- | " if posted and truth else "")
                )
                + f"{gf} |"
            )
        md.append("")
    paper = result.get("paper_net_large")
    if paper:
        w = paper["windows"]
        md += [
            f"**Paper's net on the large case** (`mss_unet3d`, widths 30-320, untrained; preprocessed "
            f"{paper['preprocessed_shape']} at the paper's spacing, roi {paper['roi_size']}): one window = "
            f"{paper['window_gflop']:.0f} GFLOP, {paper['seconds_per_window']:.1f} s (median of "
            f"{len(paper['window_times_s'])} windows after one set-up call). Whole case extrapolated = windows x flips "
            "x seconds per window:",
            "",
            "| path | windows | 8 flips (h) | 1 flip (h) |",
            "|---|---|---|---|",
        ]
        for k in ("full", "crop_exact", "crop_regrid"):
            md.append(f"| {k} | {w[k]} | {paper['hours_8flip'][k]:.2f} | {paper['hours_1flip'][k]:.2f} |")
        md.append("")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
