"""Moved to :mod:`p2sam.runner` (the application layer); this old import path still works."""

from p2sam.runner import execute_job, job_spec, artifact_manifest, problem, MEDIA_TYPES, QUEUED

__all__ = ["execute_job", "job_spec", "artifact_manifest", "problem", "MEDIA_TYPES", "QUEUED"]
