"""Batches: manifests, resume after interruption, truth Dice in the report, chain mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2sam.batch import Manifest, load_manifest, run_batch, sequences_manifest, summarise
from p2sam.modelpool import ModelPool
from p2sam.pipeline import run_job
from p2sam.settings import Settings


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    """Two 'patients' of 5 frames each (CVC layout): a blob drifting across a textured frame."""
    root = tmp_path_factory.mktemp("cvc")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    for s, start in ((1, 1), (3, 40)):
        seq = root / f"seq{s:02d}"
        seq.mkdir()
        for i in range(5):
            img = rng.integers(50, 110, (96, 128, 3)).astype(np.uint8)
            blob = (yy - 48) ** 2 / 20**2 + (xx - 50 - 3 * i) ** 2 / 28**2 < 1
            img[blob] = (210, 100, 80)
            Image.fromarray(img).save(seq / f"{start + i}.png")
            Image.fromarray((blob * 255).astype(np.uint8)).save(seq / f"{start + i}_mask.png")
    return root


@pytest.fixture(scope="module")
def job_runner(model_dir, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=model_dir)
    pool = ModelPool(settings)
    calls = []

    def run(spec, out):
        calls.append(spec.targets[0].name)
        return run_job(spec, out, pool=pool, settings=settings)

    return run, calls


def test_sequences_manifest_follows_the_protocol(sequences):
    manifest = sequences_manifest(sequences)
    assert [p.id for p in manifest.patients] == ["seq01", "seq03"]
    p = manifest.patients[1]
    assert Path(p.prior.image).name == "42.png"  # 3rd frame (numeric order)
    assert [v.name for v in p.visits] == ["40", "41", "43", "44"]
    assert [v.truth is not None for v in p.visits] == [False, False, True, True]  # frames 1-3 unscored


def test_batch_runs_resumes_and_reports(sequences, job_runner, tmp_path):
    run, calls = job_runner
    manifest = sequences_manifest(sequences)
    out = tmp_path / "batch"
    first = run_batch(manifest, out, overrides={"model": "testmodel", "n_samples": 2}, run=run)
    assert len(first) == 8 and not any(r.error for r in first)
    scored = [r for r in first if r.dice is not None]
    assert len(scored) == 4 and all(0.0 <= r.dice <= 1.0 for r in scored)
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["visits"] == 8 and set(report["summary"]["dice_per_patient"]) == {"seq01", "seq03"}
    assert (out / "report.csv").read_text().splitlines()[0].startswith("patient,visit,found")
    png = out / "seq01" / "volume.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # interrupt: one visit's results vanish (as if the worker died while writing it)
    victim = out / "seq03" / "43"
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    calls.clear()
    second = run_batch(manifest, out, overrides={"model": "testmodel", "n_samples": 2}, run=run)
    assert [r.skipped for r in second].count(False) == 1 and not next(r for r in second if r.visit == "43").skipped
    assert summarise(second)["dice_per_patient"] == pytest.approx(summarise(first)["dice_per_patient"])


def test_chain_mode_uses_the_previous_result_as_prior(sequences, job_runner, tmp_path):
    run, _ = job_runner
    manifest = Manifest(patients=[sequences_manifest(sequences).patients[0]])
    fixed, chained = tmp_path / "fixed", tmp_path / "chained"
    run_batch(manifest, fixed, overrides={"model": "testmodel", "n_samples": 0}, run=run)
    run_batch(manifest, chained, chain=True, overrides={"model": "testmodel", "n_samples": 0}, run=run)

    def digests(folder):
        return [json.loads((folder / "seq01" / v / "result.json").read_text())["prior"]["digest"] for v in ("1", "2", "4", "5")]

    assert len(set(digests(fixed))) == 1
    assert len(set(digests(chained))) == 4


def test_csv_manifest(tmp_path, sequences):
    rows = ["patient,role,image,mask,roi,truth,name",
            f"p1,prior,{sequences}/seq01/3.png,{sequences}/seq01/3_mask.png,,,",
            f"p1,visit,{sequences}/seq01/4.png,,,{sequences}/seq01/4_mask.png,v4"]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    manifest = load_manifest(path)
    assert manifest.patients[0].visits[0].name == "v4" and manifest.patients[0].prior.mask.endswith("3_mask.png")
