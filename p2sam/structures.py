"""Which structures of the prior a multi-ROI job segments: ``rois: [...]`` or ``"all"``.

    structures, warnings = read_structures(mask_path, prior, rois)

Every requested name is checked before anything is read, so a job naming three ROIs of which
two do not exist fails once, listing both and what the structure set holds. ``"all"`` is every
ROI with contours on the prior image (ROIs with no contours, or none on the given slices, are
left out with a warning). Names, numbers, colours and RTROIInterpretedType come from the prior's
structure set, so the follow-up's RTSTRUCT shows the plan's structures as the planner drew them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import imaging

# Colours for structures whose prior gives none (SEG, NIfTI): distinct, readable on grey CT.
PALETTE = [(0, 255, 0), (255, 255, 0), (0, 160, 255), (255, 0, 255), (255, 128, 0), (0, 255, 255),
           (255, 0, 0), (160, 255, 160), (200, 120, 255), (255, 200, 120)]


@dataclass
class Structure:
    """One prior structure: its mask on the prior's grid and what the outputs carry over."""

    name: str
    number: int
    mask: np.ndarray  # (z, y, x) bool on the prior
    color: tuple[int, int, int]
    interpreted_type: str
    slug: str = ""  # file-name form of the name, unique within the job


def read_structures(mask_path: str | Path, prior: imaging.Volume, rois: list[str] | str) -> tuple[list[Structure], list[str]]:
    """The structures a job asked for, in the structure set's order; plus warnings (ROIs of
    ``"all"`` left out). Raises RoiNotFoundError (all unknown names at once) or EmptyRoiError."""
    source = Path(mask_path).name
    catalog = imaging.roi_catalog(mask_path, prior)
    if rois == "all":
        chosen = [info for info in catalog if info.n_contours > 0]
        skipped = [info.name for info in catalog if info.n_contours == 0]
    else:
        chosen = _by_name(catalog, rois, source)
        skipped = []
    warnings = [f"ROI '{name}' has no contours in {source}; left out" for name in skipped]
    structures: list[Structure] = []
    for info in chosen:
        try:
            detail = imaging.read_mask_detail(mask_path, prior, info.number if len(catalog) > 1 else None)
        except imaging.EmptyRoiError:
            if rois != "all":
                raise
            warnings.append(f"ROI '{info.name}' has no contour on the prior image; left out")
            continue
        color = info.color or PALETTE[len(structures) % len(PALETTE)]
        structures.append(Structure(info.name, info.number, detail.mask, color, info.interpreted_type))
    if not structures:
        raise imaging.EmptyRoiError(f"{source}: no ROI has contours on the prior image "
                                    f"(ROIs: {', '.join(i.name for i in catalog) or 'none'})")
    _slugs(structures)
    return structures, warnings


def _by_name(catalog, rois: list[str], source: str):
    """Catalog entries for the names (exact, then ignoring case; an ASCII number is an ROI number)."""
    chosen, unknown = [], []
    for roi in rois:
        exact = [i for i in catalog if i.name == roi]
        loose = [i for i in catalog if i.name.strip().lower() == roi.strip().lower()]
        by_number = [i for i in catalog if roi.isascii() and roi.isdigit() and i.number == int(roi)]
        found = exact or loose or by_number
        if len(found) != 1:
            unknown.append(roi if not found else f"{roi} (several ROIs have this name)")
        elif found[0] in chosen:
            raise imaging.RoiNotFoundError(f"{source}: ROI '{roi}' is asked for twice")
        else:
            chosen.append(found[0])
    if unknown:
        listing = ", ".join(f"'{i.name}'" for i in catalog) or "none"
        raise imaging.RoiNotFoundError(f"{source}: no ROI {', '.join(repr(u) for u in unknown)}; "
                                       f"the structure set holds: {listing}")
    return sorted(chosen, key=catalog.index)  # the structure set's order, whatever order they were named in


def _slugs(structures: list[Structure]) -> None:
    seen: set[str] = set()
    for s in structures:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", s.name).strip("._-")[:48] or f"roi{s.number}"
        slug, n = base, 2
        while slug.lower() in seen:
            slug, n = f"{base}-{n}", n + 1
        seen.add(slug.lower())
        s.slug = slug


def label_map(masks: list[np.ndarray]) -> np.ndarray:
    """One label per voxel (1..N in the order given, 0 = none). Structures may overlap (the body
    holds the cord); where they do, the smaller structure's label is kept, so every structure
    stays visible. Per-structure masks keep the overlaps."""
    out = np.zeros(masks[0].shape, np.uint16)
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):  # largest first, smaller on top
        out[masks[i]] = i + 1
    return out
