"""`p2sam batch`: run or resume a longitudinal batch locally, and print its report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="batch_command", required=True, metavar="action")
    run = sub.add_parser("run", help="run (or resume) a batch in this process")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest file (.json or .csv)")
    src.add_argument("--sequences", help="folder of sequence folders (CVC-ClinicDB layout): sequence = patient, 3rd frame = prior")
    run.add_argument("--out", required=True, help="batch folder (re-run with the same folder to resume)")
    run.add_argument("--chain", action="store_true", help="each visit's result is the prior of the next visit")
    run.add_argument("--model", help="model for every job (default: the manifest's, else auto)")
    run.add_argument("--samples", type=int, help="uncertainty samples per visit")
    run.add_argument("--method", choices=["p2sam", "fixed", "persam", "direct"])
    run.add_argument("-q", "--quiet", action="store_true")
    run.set_defaults(run=_run)
    rep = sub.add_parser("report", help="print the report of a batch folder")
    rep.add_argument("folder")
    rep.set_defaults(run=_report)


def _run(args: argparse.Namespace) -> int:
    from .batch import load_manifest, run_batch, sequences_manifest, summarise

    manifest = load_manifest(args.manifest) if args.manifest else sequences_manifest(args.sequences)
    overrides = {k: v for k, v in (("model", args.model), ("n_samples", args.samples), ("method", args.method)) if v is not None}
    total = sum(len(p.visits) for p in manifest.patients)
    done = {"n": 0}

    def progress(patient: str, pi: int, n_patients: int, vi: int, n_visits: int) -> None:
        done["n"] += 1
        if not args.quiet:
            print(f"\r[{done['n'] / total * 100:5.1f}%] patient {pi + 1}/{n_patients} ({patient}) visit {vi}/{n_visits}   ",
                  end="", file=sys.stderr, flush=True)

    reports = run_batch(manifest, args.out, chain=args.chain, overrides=overrides, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    _print_summary(summarise(reports), Path(args.out))
    return 1 if any(r.error for r in reports) else 0


def _report(args: argparse.Namespace) -> int:
    data = json.loads((Path(args.folder) / "report.json").read_text())
    _print_summary(data["summary"], Path(args.folder))
    return 0


def _print_summary(summary: dict, folder: Path) -> None:
    print(f"{'patient':<16}{'mean Dice':>10}")
    for patient, d in summary["dice_per_patient"].items():
        print(f"{patient:<16}{d:>10.4f}")
    print(f"patients {summary['patients']}  visits {summary['visits']}  errors {summary['errors']}  to review {summary['review']}")
    print(f"report: {folder / 'report.csv'}  {folder / 'report.json'}")
    if summary["mean_dice"] is not None:
        print(f"mean_dice {summary['mean_dice']:.4f}")
