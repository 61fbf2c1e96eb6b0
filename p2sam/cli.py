"""The `p2sam` command. It only parses arguments; the work is in the library functions.

    p2sam example --out demo
    p2sam segment --prior demo/prior --prior-mask demo/prior_rtstruct.dcm --roi GTV \
                  --target demo/followup1 --target demo/followup2 --out demo/out
    p2sam serve | worker | batch | train | models | config | apikey
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import get_args

from .spec import DEFAULT_SAMPLER, Sampler


def _cmd_example(args: argparse.Namespace) -> int:
    from imaging.phantom import write_example_case, write_picture_example

    if getattr(args, "pictures", False):
        paths = write_picture_example(args.out, seed=args.seed)
        out = Path(args.out)
        print(f"wrote a synthetic 2-D case (two endoscopy-like frames, the polyp's mask on both) to {out}/ (seed {args.seed}):")
        for key, path in paths.items():
            print(f"  {key:<12} {path}")
        print("next:")
        print(f"  p2sam segment --prior {out}/frame1.png --prior-mask {out}/frame1_mask.png --target {out}/frame2.png --out {out}/out")
        return 0
    paths = write_example_case(args.out, seed=args.seed)
    out = Path(args.out)
    print(f"wrote the synthetic example case to {out}/ (seed {args.seed}):")
    for key in ("prior", "prior_rtstruct", "followup1", "followup2", "followup1_gtv", "followup2_gtv"):
        print(f"  {key:<15} {paths[key]}")
    print("next:")
    print(f"  p2sam segment --prior {out}/prior --prior-mask {out}/prior_rtstruct.dcm --roi GTV "
          f"--target {out}/followup1 --target {out}/followup2 --out {out}/out")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from .pipeline import run_job
    from .spec import JobSpec, TargetSpec

    roi, rois = roi_args(args.roi)
    spec = JobSpec(
        prior_image=args.prior, prior_mask=args.prior_mask, roi=roi, rois=rois,
        targets=[TargetSpec(path=t) for t in args.target],
        outputs=args.outputs.split(",") if args.outputs else JobSpec.model_fields["outputs"].default_factory(),
        model=args.model, method=args.method, n_samples=args.samples, sampler=args.sampler,
        window=args.window, slice_margin=args.margin,
    )
    last = {"stage": None}

    def progress(stage: str, fraction: float, message: str) -> None:
        if not args.quiet and (stage != last["stage"] or stage == "segmenting"):
            print(f"\r[{fraction * 100:5.1f}%] {message:<60}", end="" if stage == "segmenting" else "\n", file=sys.stderr, flush=True)
        last["stage"] = stage

    from .settings import apply_process_limits, get_settings

    apply_process_limits(get_settings())
    summary = run_job(spec, args.out, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    print(f"model {summary.model['name']} ({summary.model['backbone']}), method {summary.method}, {summary.seconds:.1f} s")
    print(f"{'target':<16}{'found':>7}{'size':>14}{'review':>8}  folder")
    notes: list[str] = []
    for t in (result.summary() for result in summary.targets):
        print(f"{t.target:<16}{str(t.found):>7}{size_text(t):>14}{('yes' if t.review else 'no'):>8}  {Path(args.out) / t.target}/")
        for st in t.structures or []:  # a multi-ROI job: one line per structure
            print(f"{'  ' + st.name:<16}{st.found!s:>7}{size_text(st):>14}{('yes' if st.review else 'no'):>8}")
        for w in t.warnings:
            print(f"{'':<16}warning: {w}")
        notes += [n for n in t.notes if n not in notes]
    for note in notes:  # said once for the job, not per target
        print(f"note: {note}")
    args.summary = summary
    if getattr(args, "closing_line", True):
        print(f"results: {Path(args.out)}/<target>/ ({', '.join(files_written(summary))})")
    return 0


def roi_args(values: str | list[str] | None) -> tuple[str | None, list[str] | str | None]:
    """``--roi`` as given (repeatable): one name -> the one-ROI form (``roi``); several, or
    ``all``, -> a multi-ROI job (``rois``). ``all`` beside names is a JobInputError."""
    if values is None or isinstance(values, str):
        return values, None
    if "all" in values:
        if len(values) > 1:
            from .errors import JobInputError

            raise JobInputError("--roi all means every ROI; give it alone, or name the ROIs")
        return None, "all"
    return (values[0], None) if len(values) == 1 else (None, list(values))


def size_text(target) -> str:
    """'12.34 mL' for a volume, '5900 mm²' for a picture or single slice, '-' when nothing was found
    (``target``: a TargetSummary or StructureSummary of p2sam.records)."""
    if target.area_mm2 is not None:
        return f"{target.area_mm2:.0f} mm²"
    return "-" if target.volume_ml is None else f"{target.volume_ml:.2f} mL"


def files_written(summary) -> list[str]:
    """Every file name written for the job's targets (a JobSummary), in a stable order (result.json last)."""
    names: list[str] = []
    for t in summary.targets:
        names += [f for f in t.files.values() if f not in names]
    return names + ["result.json"]


def _cmd_demo(args: argparse.Namespace) -> int:
    """Example case + segmentation of both follow-ups + Dice against the phantom's ground truth."""
    import imaging

    from .pipeline import dice

    t0 = time.perf_counter()
    out = Path(args.out)
    _cmd_example(argparse.Namespace(out=str(out), seed=args.seed))
    seg_args = argparse.Namespace(
        prior=str(out / "prior"), prior_mask=str(out / "prior_rtstruct.dcm"), roi="GTV",
        target=[str(out / "followup1"), str(out / "followup2")], out=str(out / "out"), model=args.model,
        method="p2sam", samples=None, sampler=DEFAULT_SAMPLER, window=None, margin=None, outputs=None, quiet=args.quiet,
        closing_line=False)
    print()
    code = _cmd_segment(seg_args)
    print("\nDice against the phantom's ground truth (3-D, whole volume):")
    for name in ("followup1", "followup2"):
        target = imaging.read_image(out / name)
        truth = imaging.read_mask(out / f"{name}_gtv.nii.gz", target)
        predicted = imaging.read_mask(out / "out" / name / "mask.nii.gz", target)
        print(f"  {name:<12} Dice {dice(predicted, truth):.3f}   (truth {truth.sum()} voxels, predicted {predicted.sum()})")
    print(f"\nresults: {out / 'out'}/<target>/ ({', '.join(files_written(seg_args.summary))})")
    print(f"all of it took {time.perf_counter() - t0:.0f} s (example case, model loading, both follow-ups, Dice)")
    return code


def _cmd_models(args: argparse.Namespace) -> int:
    # torch's import and the checksums take seconds on a small machine: say so before, not after
    print("reading the model files (loading PyTorch, checking sha256) ...", file=sys.stderr, flush=True)
    from .modelpool import ModelPool

    for m in ModelPool().describe():
        card = m["card"] or {}
        print(f"{m['name']:<16}{m['backbone'] or '?':<12}{m['size_bytes'] / 1e6:7.1f} MB  sha256 {m['sha256'][:16]}  {card.get('summary', '')}")
        verified = " (size and sha256 verified)" if card.get("sha256") == m["sha256"] else ""
        print(f"{'':<16}source: {card.get('source') or m['source']}{verified}; modality: {card.get('modality', 'not stated')}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from .settings import Settings, settings_markdown

    if args.markdown:
        print(settings_markdown(), end="")
        return 0
    current = Settings()
    for name, field in Settings.model_fields.items():
        print(f"P2SAM_{name.upper():<28}= {getattr(current, name)!s:<24} {field.description}")
    return 0


LAZY_COMMANDS = {
    "train": ("p2sam.train", "fine-tune a backbone (full or LoRA) with the interactive protocol"),
    "train-latent": ("p2sam.train_latent", "train the latent uncertainty head on a frozen backbone"),
    "serve": ("service.cli", "run the HTTP API (uvicorn)"),
    "worker": ("worker.cli", "run a Celery worker (one per GPU)"),
    "batch": ("p2sam.batch_cli", "run, resume or submit a longitudinal batch from a manifest"),
    "apikey": ("service.cli", "create, list or revoke API keys"),
    "dicom-listener": ("dicomnet.cli", "receive studies over DICOM (C-STORE SCP) and send job results to PACS"),
    "dicom-send": ("dicomnet.cli", "send job results to their DICOM destinations (the outbox), without listening"),
}


def _attach(name: str, module: str, parser: argparse.ArgumentParser) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - a build without that part
        reason = f"'{name}' is not available: {exc}"  # (exc itself is unbound after the except block)
        parser.set_defaults(run=lambda a: (print(reason, file=sys.stderr), 2)[1])
        return
    if name == "train":
        mod.add_train_arguments(parser)
        parser.set_defaults(run=mod.run_train)
    else:
        mod.add_arguments(name, parser)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2sam", description="Patient-adaptive segmentation of follow-up scans with P²SAM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("example", help="write the synthetic CT case (prior + RTSTRUCT + 2 follow-ups + truth), or with --pictures a 2-D one")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pictures", action="store_true", help="write a 2-D case instead: two RGB frames + the prior's PNG mask")
    p.set_defaults(run=_cmd_example)

    p = sub.add_parser("demo", help="write the example case, segment its follow-ups, report Dice against the truth")
    p.add_argument("--out", default="demo", help="folder to write (default: demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("segment", help="segment the prior's structure on follow-ups (runs in-process)")
    p.add_argument("--prior", required=True, help="prior image: DICOM folder/zip/file, NIfTI, PNG/JPEG")
    p.add_argument("--prior-mask", required=True, help="prior contour: RTSTRUCT, DICOM SEG, NIfTI or PNG")
    p.add_argument("--roi", action="append", help="RTSTRUCT ROI name/number or SEG segment (default: the only one); "
                   "repeat for several structures in one job (one RTSTRUCT / SEG per target), or 'all' for every ROI "
                   "with contours on the prior")
    p.add_argument("--target", action="append", required=True, help="follow-up image (repeat for several)")
    p.add_argument("--out", required=True, help="output folder: one subfolder per target")
    p.add_argument("--model", default="auto", help="model name (p2sam models) or weights file; auto: by image type")
    p.add_argument("--method", default="p2sam", choices=["p2sam", "fixed", "persam", "direct"])
    p.add_argument("--samples", type=int, default=None, help="uncertainty samples per target (default P2SAM_N_SAMPLES)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(get_args(Sampler)))
    p.add_argument("--window", default=None, help="CT window: default, lung, soft_tissue, bone or lo,hi (HU)")
    p.add_argument("--margin", type=int, default=None, help="extra follow-up slices beyond the registered structure")
    p.add_argument("--outputs", default=None, help="comma list of rtstruct,seg,nifti,samples,preview (default all)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_segment)

    p = sub.add_parser("models", help="list the models on offer")
    p.set_defaults(run=_cmd_models)

    p = sub.add_parser("config", help="print every P2SAM_ setting with its current value")
    p.add_argument("--markdown", action="store_true", help="print docs/settings.md")
    p.set_defaults(run=_cmd_config)

    # Subcommands whose modules pull in heavy dependencies (torch, FastAPI, Celery) are only
    # imported when they are the command being run, so `p2sam apikey list` starts quickly.
    for name, (module, help_text) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == command:
            _attach(name, module, p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"p2sam {args.command}: error: {message}", file=sys.stderr)
        return 2


def user_error(exc: Exception) -> str | None:
    """One line for errors that are the user's to fix (bad input, unknown model, bad config), else None.
    Which errors those are is decided in one place, shared with the worker: p2sam.errors.classify."""
    from .errors import classify, message

    return message(exc) if classify(exc).user else None


if __name__ == "__main__":
    raise SystemExit(main())
