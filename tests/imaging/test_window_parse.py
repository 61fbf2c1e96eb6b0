"""One parser for a CT window written as text, used by imaging, JobSpec (CLI, workers) and the API schema."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imaging import PRESETS, ImagingError, parse_window


@pytest.mark.parametrize("text, parsed", [
    ("default", "default"), ("bone", "bone"), (" lung ", "lung"),
    ("-160,240", (-160.0, 240.0)), ("-1350.5, 150", (-1350.5, 150.0)),
])
def test_presets_and_pairs_parse(text, parsed):
    assert parse_window(text) == parsed


@pytest.mark.parametrize("text, reason", [
    ("brain", "unknown window preset 'brain'"), ("240,-160", "hi > lo"), ("1,1", "hi > lo"),
    ("nan,1", "finite"), ("a,b", "a preset"), ("1,2,3", "a preset"), ("", "unknown window preset"),
])
def test_anything_else_is_refused_with_a_reason(text, reason):
    with pytest.raises(ImagingError, match=reason.replace("(", r"\(").replace(">", ">")):
        parse_window(text)


def test_every_preset_is_accepted_by_the_api_and_the_job_spec():
    from p2sam.spec import JobSpec
    from service.schemas import JobSettingsIn

    for name in PRESETS:
        assert JobSettingsIn(window=name).window == name
        assert JobSpec(prior_image="p", prior_mask="m", targets=[{"path": "t"}], window=name).window == name
    assert name in JobSettingsIn.model_fields["window"].description


@pytest.mark.parametrize("text", ["brain", "300,100", "x,1"])
def test_the_api_schema_and_the_job_spec_refuse_the_same_windows(text):
    from p2sam.spec import JobSpec
    from service.schemas import JobSettingsIn

    with pytest.raises(ValidationError, match="window"):
        JobSettingsIn(window=text)
    with pytest.raises(ValidationError, match="window"):
        JobSpec(prior_image="p", prior_mask="m", targets=[{"path": "t"}], window=text)
