"""Messages a newcomer reads: registration warnings with sensible digits."""

from __future__ import annotations

import re

import numpy as np

from imaging import Volume
from p2sam.followup import _plan


def test_poor_registration_warning_has_two_decimals():
    rng = np.random.default_rng(0)
    prior = Volume(array=rng.normal(0, 300, (8, 40, 40)).astype(np.float32), spacing=(2, 2, 3), modality="CT")
    target = Volume(array=rng.normal(0, 300, (8, 40, 40)).astype(np.float32), spacing=(2, 2, 3), modality="CT")
    mask = np.zeros(prior.shape, bool)
    mask[3:5, 15:25, 15:25] = True
    warnings: list[str] = []
    _, _, registration, mapped = _plan(prior, mask, target, 1, warnings)
    assert registration["quality"] == "poor" and mapped.shape == target.shape
    poor = [w for w in warnings if "registration quality is poor" in w]
    assert len(poor) == 1 and re.search(r"NCC -?\d\.\d\d,", poor[0]), warnings
    assert not re.search(r"\d\.\d{4,}", " ".join(warnings)), warnings
