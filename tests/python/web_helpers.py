"""Shared by the web application's tests: the bundled models loaded once, a logged-in API client, waiting for
the analysis worker."""
import io
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMEAR = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"


def login(client, username, password):
    """Logs client in through the API; returns the headers changing requests need (the CSRF token)."""
    r = client.post("/api/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


def upload(client, headers, sample_id, data=None, name="smear.jpg"):
    data = SMEAR.read_bytes() if data is None else data
    return client.post(f"/api/samples/{sample_id}/images", files={"file": (name, io.BytesIO(data), "image/jpeg")}, headers=headers)


def wait_done(client, image_id, timeout=120.0):
    """The image's JSON once the worker has finished it (done or failed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        image = client.get(f"/api/images/{image_id}").json()
        if image["status"] in ("done", "failed"):
            return image
        time.sleep(0.2)
    raise AssertionError(f"image {image_id} still {image['status']} after {timeout} s")
