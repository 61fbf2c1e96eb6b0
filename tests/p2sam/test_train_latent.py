"""`p2sam train-latent` writes a head the latent sampler of a job then uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models.latent import load_latent
from p2sam.modelpool import ModelPool
from p2sam.pipeline import run_job
from p2sam.settings import Settings
from p2sam.spec import JobSpec, TargetSpec

REPO = Path(__file__).resolve().parents[2]


def test_train_latent_then_a_job_samples_with_it(model_dir, example_case, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    head_path = models / "testmodel_latent.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "p2sam.cli", "train-latent", "--weights", str(models / "testmodel.pt"), "--dataset", "phantom",
         "--count", "6", "--epochs", "1", "--batch-size", "3", "--out", str(head_path)],
        capture_output=True, text=True, cwd=REPO, env=os.environ, timeout=600)
    assert proc.returncode == 0, proc.stderr
    head = load_latent(head_path)
    assert head.latent_dim == 6
    card = json.loads(json.dumps(__import__("torch").load(head_path, weights_only=True)["card"]))
    assert "perturbed" in card["annotators"] and card["epochs"] == 1

    settings = Settings(data_dir=tmp_path / "data", models_dir=models)
    spec = JobSpec(prior_image=example_case["prior"], prior_mask=example_case["prior_rtstruct"], roi="GTV",
                   targets=[TargetSpec(path=example_case["followup1"])], model="testmodel", n_samples=3, sampler="latent",
                   outputs=["nifti", "samples"])
    summary = run_job(spec, tmp_path / "out", pool=ModelPool(settings), settings=settings)
    assert summary.sampler == {"kind": "latent", "k": 3}
    assert (tmp_path / "out" / "followup1" / "samples.nii.gz").is_file()
