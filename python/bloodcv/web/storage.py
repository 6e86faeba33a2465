"""Uploaded images: checked before anything is stored, then kept under the data folder by content hash.
No path is ever made from what a user sent."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage

from .. import read_image

FORMATS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "BMP": "bmp"}


class UploadError(Exception):
    """An upload refused: status is the HTTP status to answer (413, 415, 422), the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class StoredImage:
    sha256: str
    stored_name: str
    width: int
    height: int


class ImageStore:
    def __init__(self, root: Path, max_bytes: int, max_pixels: int):
        self.root = Path(root)
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, stored_name: str) -> Path:
        # stored names are <hex sha256>.<extension>, made by store(); checked again so that a tampered row
        # cannot point outside the folder
        stem, _, ext = stored_name.partition(".")
        if len(stem) != 64 or not all(c in "0123456789abcdef" for c in stem) or ext not in FORMATS.values():
            raise ValueError(f"not a stored image name: {stored_name!r}")
        return self.root / "images" / stem[:2] / stored_name

    def store(self, data: bytes, name: str = "upload") -> StoredImage:
        """Checks data (size, format, pixel count, whole decodable image) and stores it; raises UploadError."""
        if len(data) > self.max_bytes:
            raise UploadError(413, f"{name}: {len(data)} bytes, more than the limit of {self.max_bytes}")
        if not data:
            raise UploadError(422, f"{name}: the file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PILImage.DecompressionBombWarning)
                with PILImage.open(io.BytesIO(data)) as im:
                    fmt, (width, height) = im.format, im.size
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
            raise UploadError(413, f"{name}: more pixels than the limit of {self.max_pixels} (a decompression bomb?)") from None
        except Exception:  # noqa: BLE001 - PIL raises many kinds for non-images
            raise UploadError(415, f"{name}: not an image (JPEG, PNG, TIFF or BMP)") from None
        if fmt not in FORMATS:
            raise UploadError(415, f"{name}: {fmt} images are not accepted (JPEG, PNG, TIFF or BMP)")
        if width * height > self.max_pixels:
            raise UploadError(413, f"{name}: {width}x{height} pixels, more than the limit of {self.max_pixels}")
        sha = hashlib.sha256(data).hexdigest()
        stored_name = f"{sha}.{FORMATS[fmt]}"
        final = self.path(stored_name)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", suffix="." + FORMATS[fmt])
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                read_image(tmp)  # the library's reader: a damaged or truncated file is refused here
            except RuntimeError as e:
                raise UploadError(422, f"{name}: damaged image ({str(e).replace(tmp, 'the upload')})") from None
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return StoredImage(sha, stored_name, width, height)
