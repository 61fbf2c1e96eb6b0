"""The job request's DICOM fields (no processes): inputs by upload id or by PACS UIDs, never
both; destinations; a batch's prior stays an upload. The API answers these with 422."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.batch_schemas import PatientIn
from service.schemas import DeliveriesIn, JobIn

U1, U2 = "a" * 32, "b" * 32


def test_inputs_by_uid_and_destinations_are_accepted():
    b = JobIn.model_validate({"prior": {"peer": "web", "study_uid": "1.2.3", "roi": "GTV"},
                              "targets": [{"series_uid": "1.2.4"}, {"upload_id": U2}], "destinations": ["pacs", "pacs", "web"]})
    assert b.prior.pulled and b.targets[0].pulled and not b.targets[1].pulled
    assert b.destinations == ["pacs", "web"]  # duplicates dropped, order kept
    assert JobIn.model_validate({"prior": {"upload_id": U1}, "targets": [{"upload_id": U2}]}).destinations is None


@pytest.mark.parametrize("prior, target, complaint", [
    ({"upload_id": U1, "study_uid": "1.2"}, {"upload_id": U2}, "not both (study_uid)"),
    ({"peer": "web"}, {"upload_id": U2}, "give upload_id, or study_uid / series_uid"),
    ({"study_uid": "1.2", "mask_item": "m1"}, {"upload_id": U2}, "mask_item refer to uploads"),
    ({"series_uid": "1.2.x"}, {"upload_id": U2}, "a DICOM UID"),
    ({"upload_id": U1}, {"peer": "web"}, "needs series_uid"),
    ({"upload_id": U1}, {"upload_id": U2, "peer": "web"}, "not both (peer)"),
    ({"study_uid": "1.2.3; DROP"}, {"upload_id": U2}, "should match pattern"),
])
def test_mixed_or_incomplete_references_are_refused(prior, target, complaint):
    with pytest.raises(ValidationError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        JobIn.model_validate({"prior": prior, "targets": [target]})


def test_destination_names_and_deliveries_body():
    with pytest.raises(ValidationError, match="peer names"):
        JobIn.model_validate({"prior": {"upload_id": U1}, "targets": [{"upload_id": U2}], "destinations": ["../x"]})
    assert DeliveriesIn.model_validate({}).destinations is None
    with pytest.raises(ValidationError):
        DeliveriesIn.model_validate({"destinations": []})  # name one, or leave it out
    with pytest.raises(ValidationError):
        DeliveriesIn.model_validate({"destinations": ["pacs"], "upload_id": U1})


def test_a_batch_prior_must_be_an_upload():
    with pytest.raises(ValidationError, match="a batch's prior is an upload"):
        PatientIn.model_validate({"id": "p1", "prior": {"study_uid": "1.2"}, "visits": [{"upload_id": U1}]})
    assert not PatientIn.model_validate({"id": "p1", "prior": {"upload_id": U1}, "visits": [{"upload_id": U2}]}).prior.pulled
