"""Training curves as a PNG (Pillow only): per student, the loss and, where the run held
shapes out, the agreement with the teacher's units, epoch by epoch.

``curves_png({student: history})``, where a history is ``distil``'s list of per-epoch
records (``loss``, optional ``val_agreement``, ``rescored``). Re-scoring epochs are marked
with a vertical line, since the loss jumps there by design.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H, MARGIN = 420, 220, 44
SERIES = (("loss", (213, 94, 0)), ("val_agreement", (0, 114, 178)))


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, history: Sequence[dict], key: str, color) -> None:
    font = ImageFont.load_default()
    draw.rectangle([x0, y0, x0 + PANEL_W - 1, y0 + PANEL_H - 1], outline=(200, 200, 200))
    draw.text((x0 + 6, y0 + 4), f"{title}: {key}", fill=(0, 0, 0), font=font)
    points = [(float(h["epoch"]), float(h[key])) for h in history if key in h and math.isfinite(float(h[key]))]
    if not points:
        draw.text((x0 + MARGIN, y0 + PANEL_H // 2), "(not recorded)", fill=(120, 120, 120), font=font)
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1e-6
    left, right, top, bottom = x0 + MARGIN, x0 + PANEL_W - 10, y0 + 22, y0 + PANEL_H - 22
    span = max(xs[-1] - xs[0], 1.0)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - xs[0]) / span * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top)

    for h in history:
        if h.get("rescored") or h.get("rescore_pending"):
            rx = at(float(h["epoch"]), lo)[0]
            draw.line([rx, top, rx, bottom], fill=(180, 180, 180))
    draw.line([at(x, y) for x, y in points] if len(points) > 1 else [at(*points[0])] * 2, fill=color, width=2)
    draw.text((x0 + 4, top - 4), f"{hi:.3g}", fill=(90, 90, 90), font=font)
    draw.text((x0 + 4, bottom - 8), f"{lo:.3g}", fill=(90, 90, 90), font=font)
    draw.text((left, bottom + 6), f"epoch {xs[0]:g}", fill=(90, 90, 90), font=font)
    draw.text((right - 60, bottom + 6), f"epoch {xs[-1]:g}", fill=(90, 90, 90), font=font)


def curves_png(histories: dict[str, Sequence[dict]]) -> bytes:
    """One row per student, one panel per series → PNG bytes."""
    if not histories:
        raise ValueError("no training history to draw")
    image = Image.new("RGB", (PANEL_W * len(SERIES), PANEL_H * len(histories)), "white")
    draw = ImageDraw.Draw(image)
    for row, (name, history) in enumerate(sorted(histories.items())):
        for col, (key, color) in enumerate(SERIES):
            _panel(draw, col * PANEL_W, row * PANEL_H, name, history, key, color)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
