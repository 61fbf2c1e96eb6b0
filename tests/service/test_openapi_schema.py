"""The OpenAPI says what the validators enforce (no server: the app's schema and the validators
side by side), and what this deployment offers (its models, its DICOM peers)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from p2sam.settings import Settings
from service.app import create_app


def _spec(tmp_path, **settings) -> dict:
    return create_app(Settings(data_dir=tmp_path / "data", **settings)).openapi()


def _validator(spec: dict, model: str):
    """A JSON-schema validator of component ``model`` with the spec's $refs resolvable."""
    schemas = spec["components"]["schemas"]
    schema = {**schemas[model], "$defs": schemas}
    text = json.dumps(schema).replace("#/components/schemas/", "#/$defs/")
    return jsonschema.Draft202012Validator(json.loads(text))


@pytest.mark.parametrize("text", ["lung", " bone ", "default", "-100,200", "-1e3, 2e3", ".5,3.", "", "lungs", "1,",
                                  "a,b", "inf,5", "nan,1", "1e999,2", "lung\n", "100,-100", "5,5"])
def test_window_pattern_admits_what_the_parser_parses(tmp_path, text):
    """Everything the parser takes matches the schema's pattern; what it refuses does too only for
    hi <= lo (beyond a regular expression)."""
    from imaging.errors import ImagingError
    from imaging.window import WINDOW_PATTERN, parse_window

    try:
        parse_window(text)
        parsed = True
    except ImagingError:
        parsed = False
    matches = re.search(WINDOW_PATTERN, text) is not None
    assert matches == parsed or (matches and text in ("100,-100", "5,5")), (text, matches, parsed)


@pytest.mark.parametrize("text", ["GTV", "Tumör bed", " y ", "a\\b", "  ", "\x00x", "x\x1b[31m", "x\x9f", "\u3000"])
def test_roi_name_out_pattern_is_check_lo(text):
    from imaging.dicom_common import check_lo
    from service.schemas import _LO

    try:
        check_lo(text)
        ok = True
    except ValueError:
        ok = False
    assert (re.search(_LO, text) is not None) == ok, text


def test_a_prior_is_an_upload_or_a_pacs_reference(tmp_path):
    spec = _spec(tmp_path, dicom_peers=json.dumps({"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}}))
    prior = _validator(spec, "PriorIn")
    up = "0" * 32
    assert prior.is_valid({"upload_id": up, "roi": "GTV"})
    assert prior.is_valid({"peer": "pacs", "study_uid": "1.2.3"})
    assert not prior.is_valid({})  # neither
    assert not prior.is_valid({"upload_id": up, "study_uid": "1.2.3"})  # both
    assert not prior.is_valid({"peer": "pacs", "series_uid": "not-a-uid"})
    assert not prior.is_valid({"upload_id": up, "roi": "GTV", "rois": ["BODY"]})
    assert not prior.is_valid({"peer": "elsewhere", "study_uid": "1.2.3"})  # not a configured peer
    assert not prior.is_valid({"study_uid": "1.2.3"})  # no P2SAM_DICOM_PULL_SOURCE: the peer must be named
    batch = _validator(spec, "PatientIn")
    assert not batch.is_valid({"id": "p1", "prior": {"peer": "pacs", "study_uid": "1.2.3"}, "visits": [{"upload_id": up}]})
    assert batch.is_valid({"id": "p1", "prior": {"upload_id": up}, "visits": [{"upload_id": up}]})


def test_the_schema_names_this_deployments_models_and_peers(tmp_path):
    bare = _spec(tmp_path / "a")
    job = _validator(bare, "JobIn")
    body = {"prior": {"upload_id": "0" * 32}, "targets": [{"upload_id": "1" * 32}]}
    assert job.is_valid({**body, "model": "auto"}) and job.is_valid({**body, "model": "lite_medsam"})
    assert not job.is_valid({**body, "model": "no_such_model"})
    assert job.is_valid({**body, "destinations": []})
    assert not job.is_valid({**body, "destinations": ["pacs"]})  # no peers configured
    assert not job.is_valid({"prior": {"peer": "pacs", "study_uid": "1.2"}, "targets": body["targets"]})
    peers = json.dumps({"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}})
    configured = _validator(_spec(tmp_path / "b", dicom_peers=peers, dicom_pull_source="pacs"), "JobIn")
    assert configured.is_valid({**body, "destinations": ["pacs"]})
    assert not configured.is_valid({**body, "destinations": ["other"]})
    assert configured.is_valid({"prior": {"study_uid": "1.2"}, "targets": [{"series_uid": "1.2.3"}]})  # default PACS
