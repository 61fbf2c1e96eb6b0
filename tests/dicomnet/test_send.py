"""Sending results: the outbox and gateway against a real Orthanc (C-STORE and STOW-RS), with
the PACS stopped and restarted, a sender killed mid-delivery, and a PACS refusing a SOP class."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pydicom
import pytest

from bench.stack import free_port
from dicomnet.gateway import Gateway
from dicomnet.outbox import DELIVERED, FAILED, PENDING, REFUSED
from p2sam.jobstore import JobStore

from .conftest import finished_job, settings_for

pytestmark = pytest.mark.timeout(300)

RTSTRUCT, SEG = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.66.4"


def rounds(gw: Gateway, until, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        gw.run_once()
        if until():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout} s: {[(d['artifact'], d['state'], d['last_error']) for d in gw.outbox.all()]}")


def states(gw: Gateway, job_id: str) -> dict[str, str]:
    return {d["artifact"]: d["state"] for d in gw.outbox.for_job(job_id)}


def check_results_in_pacs(pacs, example: dict, job_dir) -> None:
    """The RTSTRUCT and SEGs read back from the PACS: same UIDs as written, on the follow-up's
    Frame of Reference, referencing its series."""
    image = pydicom.dcmread(next(iter(sorted(example["followup1"].iterdir()))), stop_before_pixels=True)
    got = {str(ds.SOPInstanceUID): ds for ds in pacs.datasets()}
    for name in ("rtstruct.dcm", "seg.dcm", "probability_seg.dcm"):
        sent = pydicom.dcmread(job_dir / "followup1" / name, stop_before_pixels=True)
        ds = got[str(sent.SOPInstanceUID)]
        assert ds.SeriesInstanceUID == sent.SeriesInstanceUID and ds.StudyInstanceUID == image.StudyInstanceUID
        if ds.SOPClassUID == RTSTRUCT:
            ref = ds.ReferencedFrameOfReferenceSequence[0]
            assert ref.FrameOfReferenceUID == image.FrameOfReferenceUID
            assert ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
        else:
            assert ds.SOPClassUID == SEG and ds.FrameOfReferenceUID == image.FrameOfReferenceUID
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID


def test_cstore_sends_rtstruct_and_segs_once(tmp_path, orthanc, example, artifacts):
    s = settings_for(tmp_path / "data", {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}})
    store = JobStore(s.data_dir)
    job = finished_job(store, artifacts, destinations=["pacs"])
    gw = Gateway(s, store)
    rounds(gw, lambda: set(states(gw, job.id).values()) == {DELIVERED})
    assert orthanc.count() == 3
    check_results_in_pacs(orthanc, example, store.results_dir(job.id))
    for _ in range(3):
        gw.run_once()  # nothing is sent twice once acknowledged
    assert orthanc.count() == 3 and all(d["sends"] == 1 for d in gw.outbox.for_job(job.id))
    shown = store.get(job.id).deliveries
    assert {(d["artifact"], d["destination"], d["protocol"], d["state"], d["attempts"]) for d in shown} == {
        (a, "pacs", "c-store", DELIVERED, 1) for a in ("rtstruct.dcm", "seg.dcm", "probability_seg.dcm")}
    actions = [e["action"] for e in __import__("service.audit", fromlist=["AuditLog"]).AuditLog(s.data_dir).read()]
    assert actions.count("delivery.delivered") == 3


def test_server_default_destinations_apply_to_jobs_naming_none(tmp_path, orthanc, artifacts):
    s = settings_for(tmp_path / "data", {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
                     dicom_destinations="pacs")
    store = JobStore(s.data_dir)
    gw = Gateway(s, store)
    job = finished_job(store, artifacts)
    named_none = finished_job(store, artifacts, destinations=[])
    rounds(gw, lambda: set(states(gw, job.id).values()) == {DELIVERED})
    assert orthanc.count() == 3 and gw.outbox.for_job(named_none.id) == []
    assert store.get(job.id).dicom.destinations == ["pacs"]


def test_stow_rs_sends_rtstruct_and_segs(tmp_path, orthanc, example, artifacts):
    if not orthanc.has_dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    s = settings_for(tmp_path / "data", {"web": {"url": orthanc.dicomweb_url}})
    store = JobStore(s.data_dir)
    job = finished_job(store, artifacts, destinations=["web"])
    gw = Gateway(s, store)
    rounds(gw, lambda: set(states(gw, job.id).values()) == {DELIVERED})
    assert orthanc.count() == 3
    check_results_in_pacs(orthanc, example, store.results_dir(job.id))
    assert {d["protocol"] for d in store.get(job.id).deliveries} == {"stow-rs"}


def test_pacs_down_retries_then_each_artifact_arrives_exactly_once(tmp_path, orthanc, example, artifacts):
    peers = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}}
    if orthanc.has_dicomweb:
        peers["web"] = {"url": orthanc.dicomweb_url}
    s = settings_for(tmp_path / "data", peers)
    store = JobStore(s.data_dir)
    orthanc.stop()  # the PACS is down when the results are due
    job = finished_job(store, artifacts, destinations=sorted(peers))
    gw = Gateway(s, store)
    rounds(gw, lambda: all(d["attempts"] >= 2 for d in gw.outbox.for_job(job.id)))
    shown = store.get(job.id).deliveries
    assert {d["state"] for d in shown} == {PENDING} and all(d["last_error"] and d["next_attempt_at"] for d in shown)
    assert any("unreachable" in d["last_error"] for d in shown)
    orthanc.start()
    gw = Gateway(s, JobStore(s.data_dir))  # a restarted gateway carries on from the outbox on disk
    rounds(gw, lambda: set(states(gw, job.id).values()) == {DELIVERED})
    for _ in range(3):
        gw.run_once()
    assert orthanc.count() == 3  # C-STORE and STOW-RS sent the same 3 instances: each stored once
    assert all(d["state"] == DELIVERED for d in store.get(job.id).deliveries)


KILL_MID_DELIVERY = """
import os, signal, sys
from dicomnet.gateway import Gateway
from dicomnet.send import send_file
from p2sam.settings import Settings
gw = Gateway(Settings())
gw.sweep_jobs()
claimed = gw.outbox.claim_due(gw.owner, gw.lease_s)
rec = next(r for r in claimed if r["artifact"] == "rtstruct.dcm")
gw.outbox.note_sent(rec, gw.owner)
outcome = send_file(gw.store.results_dir(rec["job_id"]) / rec["target"] / rec["artifact"], gw.peers[rec["destination"]], gw.settings)
assert outcome.ok, outcome
os.kill(os.getpid(), signal.SIGKILL)  # stored by the PACS, acknowledgement not recorded
"""


def test_sender_killed_mid_delivery_still_exactly_once(tmp_path, orthanc, example, artifacts):
    peers = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}}
    s = settings_for(tmp_path / "data", peers)
    store = JobStore(s.data_dir)
    job = finished_job(store, artifacts, destinations=["pacs"])
    env = {**os.environ, "P2SAM_DATA_DIR": str(s.data_dir), "P2SAM_DICOM_PEERS": s.dicom_peers}
    proc = subprocess.run([sys.executable, "-c", KILL_MID_DELIVERY], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    assert orthanc.count() == 1
    assert set(states(Gateway(s, store), job.id).values()) == {"sending"}  # all three claimed by the dead sender
    gw = Gateway(s, store)
    rounds(gw, lambda: set(states(gw, job.id).values()) == {DELIVERED})
    rt = next(d for d in gw.outbox.for_job(job.id) if d["artifact"] == "rtstruct.dcm")
    assert rt["sends"] == 2 and rt["attempts"] == 2 and any(h["event"] == "lease expired" for h in rt["history"])
    assert orthanc.count() == 3  # the RTSTRUCT sent twice (same SOP Instance UID) is held once


STORESCP_PROFILE = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[ImagesAndSeg]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\Uncompressed
PresentationContext3 = SegmentationStorage\\Uncompressed
[[Profiles]]
[ImagesAndSeg]
PresentationContexts = ImagesAndSeg
"""


@pytest.fixture
def strict_scp(tmp_path):
    """dcmtk's storescp accepting CT images and SEGs only (a viewer that takes no RTSTRUCT)."""
    exe = shutil.which("storescp", path="/usr/bin:/usr/local/bin:/bin")  # dcmtk, not pynetdicom's venv script of that name
    if exe is None:
        pytest.skip("storescp is not installed (apt-get install dcmtk; .ci/run does it)")
    (tmp_path / "scp").mkdir()
    (tmp_path / "scp.cfg").write_text(STORESCP_PROFILE)
    port = free_port()
    proc = subprocess.Popen([exe, "-aet", "STRICT", "-od", str(tmp_path / "scp"), "-xf", str(tmp_path / "scp.cfg"),
                             "ImagesAndSeg", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield port, tmp_path / "scp"
    proc.terminate()
    proc.wait(10)


def test_destination_refusing_a_sop_class_is_shown_and_not_retried(tmp_path, artifacts, strict_scp):
    port, received = strict_scp
    s = settings_for(tmp_path / "data", {"strict": {"ae_title": "STRICT", "host": "127.0.0.1", "port": port}})
    store = JobStore(s.data_dir)
    job = finished_job(store, artifacts, destinations=["strict"])
    gw = Gateway(s, store)
    rounds(gw, lambda: set(states(gw, job.id).values()) <= {DELIVERED, REFUSED})
    for _ in range(5):
        gw.run_once()
        time.sleep(0.1)
    shown = {d["artifact"]: d for d in store.get(job.id).deliveries}
    rt = shown["rtstruct.dcm"]
    assert rt["state"] == REFUSED and rt["attempts"] == 1, rt
    assert "does not accept RT Structure Set Storage" in rt["last_error"]
    assert shown["seg.dcm"]["state"] == DELIVERED and shown["probability_seg.dcm"]["state"] == DELIVERED
    assert len(list(received.iterdir())) == 2
    # re-send on request: tried once more, refused again, not retried after that
    assert [r["artifact"] for r in gw.outbox.resend(job.id)] == ["rtstruct.dcm"]
    for _ in range(3):
        gw.run_once()
    rt = next(d for d in gw.outbox.for_job(job.id) if d["artifact"] == "rtstruct.dcm")
    assert rt["state"] == REFUSED and rt["sends"] == 2


def test_destination_never_answering_is_given_up(tmp_path, example, artifacts):
    s = settings_for(tmp_path / "data", {"gone": {"ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}},
                     dicom_max_attempts=3, dicom_retry_base_s=0.05, dicom_retry_max_s=0.1)
    store = JobStore(s.data_dir)
    job = finished_job(store, artifacts, destinations=["gone"])
    gw = Gateway(s, store)
    rounds(gw, lambda: set(states(gw, job.id).values()) == {FAILED})
    assert all(d["attempts"] == 3 and "unreachable" in d["last_error"] for d in store.get(job.id).deliveries)
    for _ in range(3):
        gw.run_once()
    assert all(d["attempts"] == 3 for d in gw.outbox.for_job(job.id))
