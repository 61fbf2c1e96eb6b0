"""`p2sam batch`: run or resume a longitudinal batch locally, submit one to the service, print a report."""

from __future__ import annotations

import argparse
import json
import os
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
    remote = sub.add_parser("submit", help="upload a batch to the service (POST /v1/batches) and follow it")
    src = remote.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest file (.json or .csv) with local paths")
    src.add_argument("--sequences", help="folder of sequence folders (CVC-ClinicDB layout): sequence = patient, 3rd frame = prior")
    remote.add_argument("--api", required=True, help="service URL, e.g. https://p2sam.hospital.local")
    remote.add_argument("--key", default=os.environ.get("P2SAM_API_KEY"),
                        help="API key with the submit scope (default: $P2SAM_API_KEY)")
    remote.add_argument("--chain", action="store_true", help="each visit's result is the prior of the next visit")
    remote.add_argument("--model", help="model for every job (default: the manifest's, else auto)")
    remote.add_argument("--samples", type=int, help="uncertainty samples per visit")
    remote.add_argument("--method", choices=["p2sam", "fixed", "persam", "direct"])
    remote.add_argument("--out", help="folder to save report.json and report.csv in when the batch is done")
    remote.add_argument("--no-wait", action="store_true", help="print the batch id and return at once")
    remote.add_argument("--idempotency-key", help="resubmitting with the same key returns the same batch")
    remote.add_argument("-q", "--quiet", action="store_true")
    remote.set_defaults(run=_submit)
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


def _submit(args: argparse.Namespace) -> int:
    from .batch import load_manifest, sequences_manifest
    from .batch_remote import Api, ApiError, batch_request, download_report, submit, wait

    if not args.key:
        print("p2sam batch submit: an API key is needed (--key or P2SAM_API_KEY)", file=sys.stderr)
        return 2
    manifest = load_manifest(args.manifest) if args.manifest else sequences_manifest(args.sequences)
    defaults = {k: v for k, v in (("model", args.model), ("n_samples", args.samples), ("method", args.method)) if v is not None}
    say = (lambda s: None) if args.quiet else (lambda s: print(f"\r{s}   ", end="", file=sys.stderr, flush=True))
    api = Api(args.api, args.key)
    try:
        body = batch_request(api, manifest, args.chain, defaults, log=say)
        batch = submit(api, body, args.idempotency_key)
        print(f"\nbatch {batch['id']} submitted ({len(body['patients'])} patients, {batch['total']} visits)",
              file=sys.stderr, flush=True)
        if args.no_wait:
            print(batch["id"])
            return 0

        def progress(b: dict) -> None:
            finished = sum(p["state"] in ("succeeded", "failed", "cancelled") for p in b["patients"])
            say(f"[{b['progress'] * 100:5.1f}%] {b['state']}: visits {b['done']}/{b['total']}, "
                f"patients {finished}/{len(b['patients'])} done, errors {b['errors']}")

        batch = wait(api, batch["id"], progress)
        if not args.quiet:
            print(file=sys.stderr)
        if batch["state"] == "cancelled":
            print(f"batch {batch['id']} was cancelled", file=sys.stderr)
            return 1
        folder = Path(args.out) if args.out else None
        report = download_report(api, batch["id"], folder) if folder else api.request("GET", f"/v1/batches/{batch['id']}/report")
    except ApiError as exc:
        print(f"\np2sam batch submit: error: {exc}", file=sys.stderr)
        return 2
    url = f"{args.api.rstrip('/')}/v1/batches/{batch['id']}"
    _print_summary(report["summary"], folder or Path("."), f"{url}/report.csv  {url}/report" if folder is None else None)
    return 0 if batch["state"] == "succeeded" and not report["summary"]["errors"] else 1


def _report(args: argparse.Namespace) -> int:
    data = json.loads((Path(args.folder) / "report.json").read_text())
    _print_summary(data["summary"], Path(args.folder))
    return 0


def _print_summary(summary: dict, folder: Path, where: str | None = None) -> None:
    print(f"{'patient':<16}{'mean Dice':>10}")
    for patient, d in summary["dice_per_patient"].items():
        print(f"{patient:<16}{d:>10.4f}")
    print(f"patients {summary['patients']}  visits {summary['visits']}  errors {summary['errors']}  to review {summary['review']}")
    print(f"report: {where or str(folder / 'report.csv') + '  ' + str(folder / 'report.json')}")
    if summary["mean_dice"] is not None:
        print(f"mean_dice {summary['mean_dice']:.4f}")
