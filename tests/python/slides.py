"""Test slides made here, not downloaded: the bundled BCCD field and its mirror images placed on a blank
canvas, saved as a pyramidal tiled TIFF with libvips (`vips tiffsave --tile --pyramid`), with the places
of the fields known, so that recall, merging and skipping can be checked exactly."""
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np

from web_helpers import SMEAR

VIPS = shutil.which("vips")
BACKGROUND = (236, 238, 240)  # the glass beside a smear: light and grey


def fields():
    """The bundled field and its three mirror images (4 different 640x480 fields, one white cell each)."""
    field = cv2.imread(str(SMEAR))
    return [field, field[:, ::-1], field[::-1], field[::-1, ::-1]]


def canvas(size, places, scale=1.0):
    """A blank canvas of size (w, h) with the fields at places [(x, y)] (level-0 pixels), scaled by `scale`."""
    w, h = size
    out = np.empty((h, w, 3), np.uint8)
    out[:] = BACKGROUND
    for f, (x, y) in zip(fields(), places):
        if scale != 1.0:
            f = cv2.resize(np.ascontiguousarray(f), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        out[y:y + f.shape[0], x:x + f.shape[1]] = f
    return out


def save_slide(image, path: Path, tile=256, mpp=None, compression="deflate"):
    """A pyramidal tiled TIFF of image at path (OpenSlide reads it as generic-tiff); with mpp, its resolution."""
    flat = path.with_suffix(".png")
    cv2.imwrite(str(flat), image)
    command = [VIPS, "tiffsave", str(flat), str(path), "--tile", "--tile-width", str(tile), "--tile-height", str(tile), "--pyramid",
               "--compression", compression]
    if mpp:
        command += ["--xres", str(1000.0 / mpp), "--yres", str(1000.0 / mpp)]  # pixels per millimetre
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    flat.unlink()
    return path
