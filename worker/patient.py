"""Moved to :mod:`p2sam.patient_task` (the application layer); this old import path still works."""

from p2sam.patient_task import patient_folder, run_patient

__all__ = ["patient_folder", "run_patient"]
