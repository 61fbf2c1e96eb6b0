"""The weights files shipped in models/weights/ and the README's first command (`p2sam demo`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import load_model

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = sorted((REPO / "models" / "weights").glob("*.pt"))
BACKBONES = [p for p in WEIGHTS if not p.stem.endswith("_latent")]


def test_the_two_required_models_ship():
    assert {p.stem for p in BACKBONES} >= {"kvasir", "ct_phantom"}


@pytest.mark.parametrize("path", BACKBONES, ids=lambda p: p.stem)
def test_shipped_weights_load_without_pickle_and_have_a_model_card(path):
    assert path.stat().st_size < 20e6, "shipped weights stay a few MB"
    torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    loaded = load_model(path)
    card = loaded.card
    assert card["name"] == path.stem and card["seed"] == 0 and "research" in card["terms"].lower()
    assert card["command"].startswith("p2sam train ") and card["metrics"]["val_no_prompt_dice"] > 0.5
    md = path.with_suffix(".md").read_text()
    assert md.startswith(f"# Model card: {path.stem}") and card["command"] in md


@pytest.mark.slow
def test_readme_demo_segments_both_followups(tmp_path):
    run = subprocess.run([sys.executable, "-m", "p2sam.cli", "demo", "--out", str(tmp_path / "demo"), "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    dices = {m[0]: float(m[1]) for m in re.findall(r"(followup\d)\s+Dice ([0-9.]+)", run.stdout)}
    assert set(dices) == {"followup1", "followup2"} and min(dices.values()) >= 0.85, run.stdout
    for name in dices:
        assert (tmp_path / "demo" / "out" / name / "rtstruct.dcm").stat().st_size > 0
