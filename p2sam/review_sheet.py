"""The review sheet: one page per follow-up that a clinician reads before accepting a contour.

    write_review_sheet(folder, target, result, qc, prior_info, title)  ->  review_sheet.png (+ .pdf)

A montage of every follow-up slice that holds the new contour, the registered prior contour, or
a QC flag, in patient order, each cropped to the same box around the structure:

* the new contour (green, solid) and the prior contour registered onto this follow-up (blue,
  dashed), overlaid on the windowed image;
* the uncertainty band (orange): pixels that some but not all uncertainty samples include;
* orientation letters (R/L, A/P, S/I from the image's direction cosines) and a 1 cm scale bar
  (pictures have neither: they carry no patient geometry);
* per panel the slice position in mm and the area; flagged slices framed in red with the reason.

The header gives the volume (with the samples' 90% band), the change against the prior (mL and
%), the QC verdict and every reason behind it. Rendered with matplotlib (Agg), no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

import imaging
from imaging import Volume

from .followup import FollowupResult

NEW = "#28e65a"          # the preview's contour colour (p2sam.preview.CONTOUR)
PRIOR = "#50a0ff"        # the preview's prior contour colour (p2sam.preview.PRIOR_CONTOUR)
BAND = (1.0, 0.55, 0.0)  # uncertainty band
FLAG = "#e0301e"
REASON_STEP = 0.022  # height of one reason line in the header, as a fraction of the page
MAX_PANELS = 48          # one page: beyond this the least informative slices are left out (said on the page)
PANEL_MIN_MM = 40.0      # the crop box is at least this wide (mm), so a tiny structure keeps its context

_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # LPS: (negative end, positive end) of x, y, z


def axis_letters(vector: np.ndarray) -> tuple[str, str]:
    """Patient directions (start, end) of an image axis given as an LPS unit vector: for the
    column axis of a standard axial slice (+x = patient's left) that is ('R', 'L'), i.e. the left
    edge of the picture is the patient's right."""
    v = np.asarray(vector, dtype=float)
    i = int(np.argmax(np.abs(v)))
    neg, pos = _LETTERS[i]
    return (neg, pos) if v[i] > 0 else (pos, neg)


def has_patient_geometry(target: Volume) -> bool:
    """False for 2-D pictures (PNG/JPEG): their 1 mm pixels and axes are assumed, not known."""
    return not (target.is_2d() and target.dicom is None and target.modality in ("XC", "OT"))


def sheet_slices(result: FollowupResult, qc: dict[str, Any]) -> list[int]:
    """Slices shown: every slice with the new contour, the registered prior contour or a flag."""
    shown = set(np.flatnonzero(result.mask.any(axis=(1, 2))).tolist())
    if result.prior_on_target is not None:
        shown |= set(np.flatnonzero(result.prior_on_target.any(axis=(1, 2))).tolist())
    shown |= {int(f["z"]) for f in qc.get("flagged_slices", [])}
    return sorted(int(z) for z in shown)


def _band(result: FollowupResult) -> np.ndarray:
    """(z, y, x) bool: some samples include the pixel and some do not (else: 0.1 < p < 0.9)."""
    if result.samples is not None and len(result.samples) > 1:
        frac = result.samples.mean(axis=0)
        return (frac > 0) & (frac < 1)
    return (result.probability > 0.1) & (result.probability < 0.9)


def _crop_box(result: FollowupResult, target: Volume, slices: list[int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the union of everything drawn, with a margin, at least PANEL_MIN_MM wide, square in mm."""
    ny, nx = target.shape[1:]
    union = result.mask[slices].any(axis=0) if slices else np.zeros((ny, nx), bool)
    if result.prior_on_target is not None and slices:
        union |= result.prior_on_target[slices].any(axis=0)
    if result.samples is not None and slices:
        union |= result.samples[:, slices].any(axis=(0, 1))
    sx, sy = float(target.spacing[0]), float(target.spacing[1])
    if union.any():
        rows, cols = np.nonzero(union)
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        half_mm = max((rows.max() - rows.min() + 1) * sy, (cols.max() - cols.min() + 1) * sx) * 0.75
    else:
        cy, cx, half_mm = (ny - 1) / 2, (nx - 1) / 2, max(ny * sy, nx * sx) / 2
    half_mm = max(half_mm, PANEL_MIN_MM / 2)
    hy, hx = half_mm / sy, half_mm / sx
    y0, y1 = int(max(0, math.floor(cy - hy))), int(min(ny, math.ceil(cy + hy) + 1))
    x0, x1 = int(max(0, math.floor(cx - hx))), int(min(nx, math.ceil(cx + hx) + 1))
    return y0, y1, x0, x1


def _fmt_ml(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f} mL"


def change_text(new: float | None, prior: float | None, unit: str = "mL", digits: int = 2) -> str:
    """'-1.23 mL (-12.0 %)' against the prior; '' when either is unknown."""
    if new is None or prior is None:
        return ""
    delta = new - prior
    pct = f" ({100 * delta / prior:+.1f} %)" if prior > 0 else ""
    return f"{delta:+.{digits}f} {unit}{pct}"


def verdict(qc: dict[str, Any], registration: dict[str, Any]) -> tuple[bool, list[str]]:
    """(needs review, reasons as lines) from the QC report."""
    reasons = []
    for f in qc.get("flagged_slices", []):
        reasons.append(f"slice {f['z']}: " + "; ".join(f["reasons"]))
    if registration.get("quality") == "poor":
        reasons.append(f"registration quality poor (NCC {registration.get('ncc_after') or 0:.2f}; good is 0.90 or more)")
    return bool(qc.get("review")), reasons


def write_review_sheet(folder: Path, name: str, target: Volume, result: FollowupResult, qc: dict[str, Any],
                       prior_info: dict[str, Any], window, roi_name: str, model: str = "", pdf: bool = True) -> dict[str, str]:
    """Render the sheet; returns the files written ({'review_sheet': 'review_sheet.png', ...})."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    geometry = has_patient_geometry(target)
    slices = sheet_slices(result, qc)
    flagged = {int(f["z"]): f["reasons"] for f in qc.get("flagged_slices", [])}
    left_out = 0
    if len(slices) > MAX_PANELS:  # keep every flagged slice and the largest cross-sections
        areas = result.mask.reshape(result.mask.shape[0], -1).sum(1)
        keep = set(flagged) | set(sorted(slices, key=lambda z: -areas[z])[: MAX_PANELS - len(flagged)])
        left_out = len(slices) - len(keep)
        slices = sorted(keep)
    positions = target.slice_positions() if geometry else np.zeros(target.shape[0])
    band = _band(result)
    y0, y1, x0, x1 = _crop_box(result, target, slices)
    sx, sy = float(target.spacing[0]), float(target.spacing[1])
    area_mm2 = target.voxel_area_mm2()

    review, reasons = verdict(qc, result.registration)
    if not review:
        th = qc.get("thresholds", {})
        reasons = [f"every slice the prior maps to was found, and the samples agree (mean pairwise Dice at least "
                   f"{th.get('min_sample_dice', 0):.2f} on every slice)" if result.samples is not None else
                   "every slice the prior maps to was found (no uncertainty samples drawn: agreement not checked)"]
    reg = result.registration
    if reg.get("method") == "rigid_registration":
        t = reg.get("translation_mm") or (0, 0, 0)
        reasons.append(f"prior registered rigidly (quality {reg.get('quality')}, NCC {reg.get('ncc_after') or 0:.2f}; "
                       f"shift {t[0]:+.1f}, {t[1]:+.1f}, {t[2]:+.1f} mm, rotation {reg.get('rotation_deg') or 0:.1f}°)")
    elif reg.get("method") == "position_matching":
        reasons.append(f"prior placed by slice position, not registered ({reg.get('reason', '')})")
    shown_reasons = reasons[:5] + ([f"... and {len(reasons) - 5} more (result.json)"] if len(reasons) > 5 else [])

    n = max(1, len(slices))
    page_w, page_h = 11.69, 8.27  # A4 landscape, inches
    fig = Figure(figsize=(page_w, page_h), dpi=150, facecolor="white")
    # the header grows with its reason lines (0.022 of the page each) so they never reach the panels
    header_h, legend_h = 0.17 + REASON_STEP * len(shown_reasons), 0.05
    grid_top, grid_bottom = 1 - header_h, legend_h + 0.01
    grid_w_in, grid_h_in = 0.98 * page_w, (grid_top - grid_bottom) * page_h
    title_in = 0.22  # room above each panel for its title

    def side(c: int) -> float:  # square panel size (inches) with c columns
        return min(grid_w_in / c, grid_h_in / math.ceil(n / c) - title_in) * 0.96

    cols = max(range(1, n + 1), key=side)
    rows = math.ceil(n / cols)
    panel_in = side(cols)
    cell_w, cell_h = grid_w_in / cols / page_w, (panel_in / 0.96 + title_in) / page_h
    x_left = 0.01 + (0.98 - cols * cell_w) / 2
    pw, ph = panel_in / page_w, panel_in / page_h

    # --- header: what, volume and change, verdict and why
    is_2d = target.is_2d()
    fig.text(0.01, 0.975, f"Review sheet: {name}, ROI {roi_name}", fontsize=15, weight="bold", va="top")
    fig.text(0.99, 0.975, f"model {model}" if model else "", fontsize=9, va="top", ha="right", color="#444444")
    if is_2d:
        area = float(result.mask.sum() * area_mm2)
        prior_area = prior_info.get("area_mm2")
        unit = "mm²" + ("" if geometry else " (picture: 1 mm pixels assumed)")
        size_line = f"Area {area:.0f} {unit}"
        if prior_area is not None:
            size_line += f"   prior {prior_area:.0f} mm²   change {change_text(area, prior_area, 'mm²', 0)}"
    else:
        vol = qc.get("volume_ml")
        band_ml = qc.get("volume_interval_90_ml")
        size_line = f"Volume {_fmt_ml(vol)}"
        if band_ml:
            size_line += f" (samples' 90% band {band_ml[0]:.2f} to {band_ml[1]:.2f} mL)"
        if prior_info.get("volume_ml") is not None:
            size_line += (f"   prior {_fmt_ml(prior_info['volume_ml'])}   change vs prior "
                          f"{change_text(vol, prior_info['volume_ml'])}")
    fig.text(0.01, 0.925, size_line, fontsize=11, va="top")
    if review:
        head = f"CHECK BEFORE USE: {len(flagged)} slice(s) flagged" if flagged else "CHECK BEFORE USE"
        fig.text(0.01, 0.885, head, fontsize=12, weight="bold", color=FLAG, va="top")
    else:
        fig.text(0.01, 0.885, "QC: nothing flagged", fontsize=12, weight="bold", color="#1a7f37", va="top")
    for i, line in enumerate(shown_reasons):
        fig.text(0.015, 0.85 - REASON_STEP * i, "• " + line, fontsize=8.5, va="top", color=FLAG if review and i < len(flagged) else "#222222")
    extent = (f"{len(slices)} slice(s) shown: every slice with the new or the prior contour, or a flag"
              + (f"; {left_out} more with the structure left out (see result.json)" if left_out else ""))
    fig.text(0.99, 0.885, extent, fontsize=8, va="top", ha="right", color="#444444")

    # --- montage
    col_letters = axis_letters(target.direction[:, 0]) if geometry else None
    row_letters = axis_letters(target.direction[:, 1]) if geometry else None
    halo = [patheffects.withStroke(linewidth=2, foreground="black")]
    for i, z in enumerate(slices):
        r, c = divmod(i, cols)
        ax = fig.add_axes([x_left + c * cell_w + (cell_w - pw) / 2, grid_top - r * cell_h - title_in / page_h - ph, pw, ph])
        picture = imaging.to_model_input(target, z, window)[y0:y1, x0:x1]
        h, w = picture.shape[:2]
        ext = (0, w * sx, h * sy, 0)  # axes in mm, square pixels on the page
        ax.imshow(picture, extent=ext, interpolation="nearest")
        b = band[z, y0:y1, x0:x1]
        if b.any():
            overlay = np.zeros((h, w, 4), np.float32)
            overlay[b] = (*BAND, 0.45)
            ax.imshow(overlay, extent=ext, interpolation="nearest")
        yy, xx = (np.arange(h) + 0.5) * sy, (np.arange(w) + 0.5) * sx
        if result.prior_on_target is not None and result.prior_on_target[z, y0:y1, x0:x1].any():
            ax.contour(xx, yy, result.prior_on_target[z, y0:y1, x0:x1].astype(float), levels=[0.5],
                       colors=PRIOR, linewidths=1.4, linestyles="dashed")
        m = result.mask[z, y0:y1, x0:x1]
        if m.any():
            ax.contour(xx, yy, m.astype(float), levels=[0.5],
                       colors=NEW, linewidths=1.6)
        ax.set_xlim(0, w * sx)
        ax.set_ylim(h * sy, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        area = float(result.mask[z].sum() * area_mm2)
        where = f"{positions[z]:+.1f} mm" if geometry else "picture"
        ax.set_title(f"slice {z}  {where}", fontsize=8, pad=2, loc="left")
        ax.text(w * sx * 0.98, h * sy * 0.03, f"{area:.0f} mm²" if area else "none", color="white", fontsize=7,
                ha="right", va="top", path_effects=halo)
        if col_letters:
            for txt, xpos, ha in ((col_letters[0], 0.02, "left"), (col_letters[1], 0.98, "right")):
                ax.text(xpos, 0.5, txt, transform=ax.transAxes, color="yellow", fontsize=8, ha=ha, va="center",
                        weight="bold", path_effects=halo)
            for txt, ypos, va in ((row_letters[0], 0.98, "top"), (row_letters[1], 0.02, "bottom")):
                ax.text(0.5, ypos, txt, transform=ax.transAxes, color="yellow", fontsize=8, ha="center", va=va,
                        weight="bold", path_effects=halo)
            # 1 cm scale bar, bottom right (above the FLAGGED label, which spans the panel's bottom)
            bar_x1, bar_y = w * sx * 0.95, h * sy * (0.78 if z in flagged else 0.93)
            ax.plot([bar_x1 - 10.0, bar_x1], [bar_y, bar_y], color="white", linewidth=2.5, solid_capstyle="butt",
                    path_effects=halo)
            ax.text(bar_x1 - 5.0, bar_y - h * sy * 0.02, "1 cm", color="white", fontsize=6.5, ha="center", va="bottom",
                    path_effects=halo)
        if z in flagged:
            for side in ax.spines.values():
                side.set_edgecolor(FLAG)
                side.set_linewidth(3)
            ax.text(0.03, 0.09, "FLAGGED: " + "; ".join(_short(r) for r in flagged[z]), transform=ax.transAxes,
                    color="white", fontsize=6.5 if panel_in > 1.6 else 5.5, va="bottom", ha="left",
                    bbox={"facecolor": FLAG, "edgecolor": "none", "pad": 1.5, "alpha": 0.9})
        else:
            for side in ax.spines.values():
                side.set_edgecolor("#999999")
    if not slices:
        fig.text(0.5, 0.45, "no slice holds the structure, the registered prior or a flag", ha="center", fontsize=12)

    # --- legend
    handles = [Line2D([], [], color=NEW, linewidth=2, label="new contour (this follow-up)"),
               Line2D([], [], color=PRIOR, linewidth=2, linestyle="dashed", label="prior contour, registered onto this follow-up"),
               Patch(facecolor=(*BAND, 0.45), edgecolor="none", label="uncertainty band: some samples include it, others not"),
               Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=FLAG, linewidth=2, label="flagged slice")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    if geometry:
        fig.text(0.99, 0.95, "letters: patient directions (R/L, A/P, S/I); positions along the slice normal",
                 fontsize=7, ha="right", va="top", color="#666666")
    folder = Path(folder)
    files = {"review_sheet": "review_sheet.png"}
    fig.savefig(folder / "review_sheet.png", format="png", facecolor="white")
    if pdf:
        fig.savefig(folder / "review_sheet.pdf", format="pdf", facecolor="white")
        files["review_sheet_pdf"] = "review_sheet.pdf"
    return files


def _short(reason: str) -> str:
    """The flag reason without its numbers in parentheses (they are in the header)."""
    return reason.split(" (")[0]
