"""Pictures of STVG predictions against the truth on the synthetic STVG corpus: a sheet per query, a row per
method, true and predicted boxes and spans."""
from __future__ import annotations

import json
import os


def tube_sheets(split_dir: str, files: dict[str, str], out: str, count: int, n_frames: int = 6) -> list[str]:
    """One PNG in `out` per query of a synthetic STVG split (the first `count`): one row per method of `files`
    ({name: predictions file}), up to `n_frames` frames (half in the true span, half spread over the true and
    predicted spans), the true box in green and the method's box in red, and under each row the time line (true
    span green, predicted red)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from shards.synthetic.encode import read_frames

    truth = json.load(open(os.path.join(split_dir, "truth", "vidstg.json")))
    preds = {name: json.load(open(path)) for name, path in files.items()}
    os.makedirs(out, exist_ok=True)
    written = []
    for q in truth["videos"][:count]:
        key, vid = str(q["video_id"]), q["original_video_id"]
        frames = read_frames(os.path.join(split_dir, q["video_path"]), q["width"], q["height"])
        n = len(frames)
        ts, te = q["tube_start_frame"], q["tube_end_frame"]
        true_boxes = truth["trajectories"][vid][str(q["target_id"])]
        rows = [("truth", {"sted": [ts, te], "boxes": {}})] + [(m, p.get(key, {"sted": [0, 0], "boxes": {}}))
                                                               for m, p in preds.items()]
        lo = min([ts] + [int(p["sted"][0]) for _, p in rows])
        hi = max([te] + [int(p["sted"][1]) for _, p in rows])
        # half the frames inside the true span (where the boxes are judged), half over all the spans shown
        inside = np.linspace(ts, max(ts, te - 1), (n_frames + 1) // 2)
        picks = sorted({min(n - 1, int(round(x))) for x in (*inside, *np.linspace(lo, max(lo, hi - 1), n_frames // 2))})
        w, h, label_h, bar_h = q["width"], q["height"], 14, 8
        sheet = Image.new("RGB", (w * len(picks), (h + label_h + bar_h) * len(rows) + label_h), "white")
        d = ImageDraw.Draw(sheet)
        d.text((2, 1), f"{key}: {q['caption']}"[:120], fill="black")
        for r, (name, p) in enumerate(rows):
            y0 = label_h + r * (h + label_h + bar_h)
            s, e = (int(v) for v in p["sted"])
            d.text((2, y0 + 1), f"{name}  span [{s}, {e})  truth [{ts}, {te})"[:120], fill="black")
            for c, f in enumerate(picks):
                x0 = c * w
                sheet.paste(Image.fromarray(frames[f]), (x0, y0 + label_h))
                d.text((x0 + 2, y0 + label_h + 1), str(f), fill="white")
                tb = true_boxes.get(str(f), {}).get("bbox") if ts <= f < te else None
                if tb:
                    d.rectangle([x0 + tb[0], y0 + label_h + tb[1], x0 + tb[0] + tb[2], y0 + label_h + tb[1] + tb[3]],
                                outline=(0, 200, 0), width=2)
                pb = p["boxes"].get(str(f)) if s <= f < e else None
                if pb:   # prediction files hold [x1, y1, x2, y2]
                    d.rectangle([x0 + pb[0], y0 + label_h + pb[1], x0 + pb[2], y0 + label_h + pb[3]],
                                outline=(230, 0, 0), width=2)
            yb, width = y0 + label_h + h, w * len(picks)
            d.rectangle([0, yb, width - 1, yb + bar_h - 1], fill=(235, 235, 235))
            d.rectangle([ts * width // n, yb, max(ts * width // n, te * width // n - 1), yb + bar_h // 2 - 1],
                        fill=(0, 200, 0))
            if e > s:
                d.rectangle([s * width // n, yb + bar_h // 2, max(s * width // n, e * width // n - 1), yb + bar_h - 1],
                            fill=(230, 0, 0))
        path = os.path.join(out, f"{key}.png")
        sheet.save(path)
        written.append(path)
    return written
