"""Logging without patient data, for the API and worker processes.

Our own modules log job and upload ids only. Third-party DICOM libraries may put element
*values* in their messages (pydicom warns "Invalid value for VR PN: '<the patient's name>'"),
so their loggers are raised to ERROR and their Python warnings are silenced.
"""

from __future__ import annotations

import logging
import warnings

QUIET = ("pydicom", "highdicom", "SimpleITK", "nibabel", "PIL")


def configure(level: str = "INFO") -> None:
    """P2SAM loggers at ``level``; DICOM/imaging libraries at ERROR, their warnings off."""
    logging.getLogger("p2sam").setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("pydicom", "highdicom"):
        warnings.filterwarnings("ignore", module=module)
