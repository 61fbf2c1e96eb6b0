"""Reviews: a clinician accepts or rejects a finished job's target, with a comment.

Stored in the job record (``reviews[target]`` = the latest decision, who = the key's name,
when), shown by GET /v1/jobs/{id}; every decision is audited. Writing needs the submitting key
(with ``submit``) or ``admin``; reading the job needs ``read`` (or being the submitting key).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from p2sam.records import Review

from ..access import ReviewJob
from ..auth import Principal, principal
from ..problems import Problem, documented
from ..schemas import ReviewIn, ReviewOut
from .jobs import _finished

router = APIRouter(prefix="/v1/jobs", tags=["reviews"])


@router.post("/{job_id}/reviews", status_code=201, response_model=ReviewOut,
             responses=documented(401, 403, 404, 409, 410, 422))
def create_review(request: Request, job_id: str, body: ReviewIn, record: ReviewJob,
                  who: Principal = Depends(principal)) -> ReviewOut:
    """Accept or reject one target's result (a comment is required to reject); the latest decision
    per target is kept in the job (``reviews``) and every decision is audited."""
    services = request.app.state.services
    _finished(record)
    if body.target not in record.targets:
        raise Problem(422, f"target: job {job_id} has no target '{body.target}'; its targets: "
                      f"{', '.join(record.targets) or 'none'}", slug="target-not-found")
    comment = (body.comment or "").strip() or None
    if body.decision == "rejected" and comment is None:
        raise Problem(422, "comment: say why the result is rejected (a comment is required to reject a target)",
                      slug="comment-required")
    review = {"decision": body.decision, "comment": comment, "by": who.name, "by_key_id": who.key_id, "at": time.time()}

    def change(r) -> None:
        r.reviews = {**r.reviews, body.target: review}

    if services.store.update(job_id, change) is None:
        raise Problem(404, f"job {job_id} not found", slug="job-not-found")
    services.audit.write(who, "review.create", job_id=job_id, target=body.target, decision=body.decision)
    return ReviewOut.of(body.target, Review(**review))
