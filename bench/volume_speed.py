"""Whole-volume speed: a CT follow-up through `p2sam segment`, against slices x one encoder pass.

    python -m bench.volume_speed [--series ../shared/data/dicom/ibsi1-lung-ct/ct] [--model lite_medsam]

The follow-up is a copy of the real series shifted by (1, 4, -3) voxels (z, y, x) with a mild
intensity change, written as NIfTI on the series' grid; the prior is the series with its RTSTRUCT.
Runs `p2sam segment` (the CLI, in this process) with samples off and with K samples, each with a
fresh model pool (the prior slices are encoded in the run, as in a new job); one encoder pass is
timed in the same process (median over slices, before and after the runs). Prints the wall time,
slices segmented, slices per second and ratio = wall / (slices x one encoder pass).
LAST line: ``ratio <samples off>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_SERIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom" / "ibsi1-lung-ct"


def encoder_pass(engine, volume, zs, window) -> float:
    import imaging

    times = []
    for z in zs:
        img = imaging.to_model_input(volume, z, window)
        t = time.perf_counter()
        engine.encode(img)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.volume_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_SERIES), help="folder with ct/ (DICOM series) and RS_GTV.dcm")
    parser.add_argument("--roi", default="GTV-1")
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--samples", type=int, nargs="*", default=[0, 16], help="runs with these K (0: samples off)")
    parser.add_argument("--work", default=None, help="folder for the follow-up copy and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "ct").is_dir() or not (data / "RS_GTV.dcm").is_file():
        print(f"skipped: no {data}/ct + RS_GTV.dcm (see ../shared/data/README.md)")
        return 0
    import imaging
    from p2sam import modelpool
    from p2sam.cli import main as p2sam_main
    from p2sam.settings import get_settings

    work = Path(args.work or tempfile.mkdtemp(prefix="p2sam-volspeed-"))
    work.mkdir(parents=True, exist_ok=True)
    series = imaging.read_image(data / "ct")
    shifted = np.roll(series.array, (1, 4, -3), axis=(0, 1, 2)).astype(np.float32) * 1.02 + 5.0
    followup = work / "followup_shifted.nii.gz"
    imaging.write_nifti(shifted, series, followup)
    print(f"series {series.shape} (z, y, x); follow-up: shifted (1, 4, -3) voxels, x1.02 + 5 HU -> {followup}")

    pool = modelpool.ModelPool()
    _, engine = pool.get(args.model)
    window = get_settings().window
    zs = list(range(series.shape[0] // 3, series.shape[0] // 3 + 3))
    before = encoder_pass(engine, series, zs, window)
    runs = []
    for k in args.samples:
        modelpool._default = None  # a fresh pool: model loaded, prior slices encoded in this run
        out = work / f"out_k{k}"
        t = time.perf_counter()
        rc = p2sam_main(["segment", "--prior", str(data / "ct"), "--prior-mask", str(data / "RS_GTV.dcm"), "--roi", args.roi,
                         "--target", str(followup), "--out", str(out), "--model", args.model, "--samples", str(k), "--quiet",
                         "--outputs", "rtstruct,seg,nifti" + (",samples" if k else "")])
        wall = time.perf_counter() - t
        if rc:
            print(f"p2sam segment failed with {rc}")
            return rc
        result = json.loads(next(out.glob("*/result.json")).read_text())
        runs.append({"k": k, "wall": wall, "result": result})
    after = encoder_pass(engine, series, zs, window)
    one = statistics.median([before, after])
    print(f"one encoder pass ({args.model}, one slice, {torch.get_num_threads()} threads): {before:.3f} s before, {after:.3f} s after the runs")
    print(f"{'samples':>8}{'slices':>8}{'wall s':>10}{'slices/s':>10}{'encode batch':>14}{'ratio':>8}  timings (s)")
    ratios = []
    for r in runs:
        timings = r["result"].get("timings_s", {})
        slices = len(r["result"].get("slices", [])) or int(timings.get("slices", 0))
        ratio = r["wall"] / (slices * one) if slices else float("nan")
        ratios.append(ratio)
        shown = {k: v for k, v in timings.items() if k in ("registration", "encode_prior", "encode_followup", "segmentation", "total")}
        print(f"{r['k']:>8}{slices:>8}{r['wall']:>10.2f}{slices / r['wall']:>10.3f}{int(timings.get('encode_batch', 1)):>14}{ratio:>8.3f}  {shown}")
    print(f"ratio {ratios[0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
