"""grounding.inference.calibrate_box_threshold on hand-made heatmaps: the threshold whose boxes best overlap."""
from __future__ import annotations

import numpy as np
import pytest

from grounding.inference import CropGeometry, calibrate_box_threshold


def test_box_threshold_maximises_mean_iou_by_hand():
    geom = CropGeometry(4, 4, 4)                      # crop = source: cell (r, c) is the pixel square [c, c+1) x [r, r+1)
    heat = np.full((4, 4), 0.1)
    heat[1, 1] = 1.0
    heat[1, 2] = heat[2, 1] = heat[2, 2] = 0.6        # the object: rows 1-2, cols 1-2
    box = (1.0, 1.0, 3.0, 3.0)
    # 0.05: every cell, IoU 4/16; 0.5: the 2x2 object, IoU 1; 0.7: the peak cell alone, IoU 1/4
    thr, iou = calibrate_box_threshold([heat], [geom], [box], candidates=(0.05, 0.5, 0.7))
    assert (thr, iou) == (0.5, pytest.approx(1.0))
    # a second frame whose object is the whole grid: 0.05 gives (0.25 + 1) / 2, 0.5 gives (1 + 1/16) / 2
    flat = np.full((4, 4), 0.2)
    flat[0, 0] = 1.0
    thr, iou = calibrate_box_threshold([heat, flat], [geom, geom], [box, (0.0, 0.0, 4.0, 4.0)],
                                       candidates=(0.05, 0.5, 0.7))
    assert thr == 0.05 and iou == pytest.approx(0.625)   # 0.7 gives (0.25 + 1/16) / 2


def test_upsampled_box_is_the_region_at_pixel_resolution():
    from grounding.inference import locate

    geom = CropGeometry(64, 64, 64)                   # crop = source; a 4x4 grid of 16-pixel cells
    heat = np.zeros((4, 4))
    heat[1, 1] = 1.0
    point, cells = locate(heat, geom, 0.75)
    assert point == (24.0, 24.0) and cells == (16.0, 16.0, 32.0, 32.0)        # the whole cell
    # bilinear between cell centres: the map falls to 0.75 a quarter cell from the peak cell's centre
    point_up, up = locate(heat, geom, 0.75, upsample=True)
    assert point_up == point
    assert np.allclose(up, (20.0, 20.0, 28.0, 28.0), atol=1.0)
    thr, _ = calibrate_box_threshold([heat], [geom], [(20.0, 20.0, 28.0, 28.0)], candidates=(0.5, 0.75),
                                     upsample=True)
    assert thr == 0.75
