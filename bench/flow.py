"""How many project files a job crosses: from POST /v1/jobs to its RTSTRUCT, and from `p2sam segment`.

    python -m bench.flow [--out FOLDER]

Runs one real job each way in this process (embedded mode, FastAPI's TestClient, a small random
model, the synthetic example case, one target, RTSTRUCT only) and records, with a profiler on
every thread, each project source file in which at least one function ran (module bodies run by
an import do not count) between sending the request and the job's RTSTRUCT existing. The
service's housekeeping thread is left out (it runs whether or not a job is submitted). Prints
the files in order of first call, then ``files <api> <cli>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(os.environ.get("P2SAM_FLOW_ROOT") or Path(__file__).resolve().parents[1])  # the tree measured
PACKAGES = ("service", "worker", "p2sam", "imaging", "models", "dicomnet")
SKIP_THREADS = ("p2sam-maintenance",)


class Crossed:
    """Project files in which a function ran, in order of first call (all threads)."""

    def __init__(self) -> None:
        self.files: dict[str, None] = {}
        self.on = False
        self._seen: set = set()  # code objects already looked at (the profiler sees every call)
        self._root = str(ROOT) + "/"

    def profile(self, frame, event, arg):
        if not self.on or event != "call":
            return
        code = frame.f_code
        if code in self._seen or code.co_name == "<module>":
            return
        if threading.current_thread().name.startswith(SKIP_THREADS):
            return
        self._seen.add(code)
        path = code.co_filename
        if path.startswith(self._root) and path.endswith(".py"):
            rel = path[len(self._root):]
            if rel.split("/")[0] in PACKAGES:
                self.files.setdefault(rel)

    def __enter__(self):
        threading.setprofile(self.profile)
        sys.setprofile(self.profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def _model(folder: Path) -> str:
    import torch

    from models import build_sam, save_weights

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_weights(build_sam("small"), folder / "flowmodel.pt", "small", None, {"engine": {"pos_range": [1, 2]}})
    return "flowmodel"


def api_flow(root: Path, case: dict, crossed: Crossed) -> list[str]:
    from fastapi.testclient import TestClient

    from bench.stack import zip_bytes
    from p2sam.settings import Settings
    from service.app import create_app

    settings = Settings(data_dir=root / "data", models_dir=root / "models", auth="none", broker_url=None,
                        maintenance_interval_s=3600)
    with crossed, TestClient(create_app(settings)) as c:  # profiling from before the app's threads start
        prior = c.post("/v1/uploads", content=zip_bytes(case["prior"], case["prior_rtstruct"]),
                       headers={"Content-Type": "application/zip"}).json()
        target = c.post("/v1/uploads", content=zip_bytes(case["followup1"]), headers={"Content-Type": "application/zip"}).json()
        body = {"prior": {"upload_id": prior["id"], "roi": "GTV"}, "targets": [{"upload_id": target["id"], "name": "visit1"}],
                "model": "flowmodel", "n_samples": 0, "outputs": ["rtstruct"]}
        crossed.on = True
        job = c.post("/v1/jobs", json=body).json()
        rtstruct = root / "data" / "results" / job["id"] / "visit1" / "rtstruct.dcm"
        deadline = time.time() + 900
        while not rtstruct.exists() and time.time() < deadline:
            time.sleep(0.05)
        crossed.on = False
        assert rtstruct.exists(), c.get(f"/v1/jobs/{job['id']}").json()
    return list(crossed.files)


def cli_flow(root: Path, case: dict, crossed: Crossed) -> list[str]:
    os.environ["P2SAM_MODELS_DIR"] = str(root / "models")
    os.environ["P2SAM_DATA_DIR"] = str(root / "cli-data")
    from p2sam import settings

    settings.get_settings.cache_clear()
    from p2sam.cli import main

    with crossed:
        crossed.on = True
        code = main(["segment", "--prior", case["prior"], "--prior-mask", case["prior_rtstruct"], "--roi", "GTV",
                     "--target", case["followup1"], "--out", str(root / "cli-out"), "--model", "flowmodel",
                     "--samples", "0", "--outputs", "rtstruct", "-q"])
        crossed.on = False
    assert code == 0 and any((root / "cli-out").rglob("rtstruct.dcm"))
    return list(crossed.files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--only", choices=["api", "cli"], default=None, help="one of the two ways in")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        from imaging.phantom import write_example_case

        case = {k: str(v) for k, v in write_example_case(root / "case", seed=0).items()}
        _model(root / "models")
        api = api_flow(root, case, Crossed()) if args.only != "cli" else []
        cli = cli_flow(root, case, Crossed()) if args.only != "api" else []
    for name, files in (("POST /v1/jobs -> rtstruct.dcm", api), ("p2sam segment -> rtstruct.dcm", cli)):
        print(f"{name}: {len(files)} files")
        for f in files:
            print(f"  {f}")
    print(f"files {len(api)} {len(cli)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
