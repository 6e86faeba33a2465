"""bloodcv serve's API and pages, against SQLite, with the real worker analysing the bundled smear through the
library's pipeline and the bundled models."""
import io
import json
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
cv2 = pytest.importorskip("cv2")

from fastapi.testclient import TestClient  # noqa: E402

from bloodcv.data.cells import coco_samples  # noqa: E402
from bloodcv.training import classifier as tc  # noqa: E402
from bloodcv.web import Settings, create_app  # noqa: E402
from bloodcv.web import auth  # noqa: E402
from bloodcv.web.app import Models  # noqa: E402
from bloodcv.web.db import Image  # noqa: E402
from web_helpers import SMEAR, login, upload, wait_done  # noqa: E402

TYPES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def models():
    return Models(None, None)  # the bundled models, loaded once for every app of this module


def make_app(tmp_path, models, **settings):
    app = create_app(Settings(data_dir=tmp_path / "data", **settings), models=models)
    with app.state.sessions() as db:
        auth.create_user(db, "rita", "reviewer-pass", "reviewer")
        auth.create_user(db, "tom", "technician-pass", "technician")
    return app


@pytest.fixture
def app(tmp_path, models):
    return make_app(tmp_path, models)


def new_sample(client, headers, patient="P-0001", name="smear A", date="2026-11-01"):
    r = client.post("/api/samples", json={"patient": patient, "name": name, "date": date, "stain": "Giemsa"}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def analysed(client, headers):
    sample = new_sample(client, headers)
    r = upload(client, headers, sample)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    image = wait_done(client, r.json()["id"])
    assert image["status"] == "done", image
    return sample, image


def white_cell(image):
    (cell,) = [c for c in image["cells"] if c["label"] == "WBC"]
    return cell


def test_the_bundled_smear_is_analysed_in_the_background_with_its_white_cell_typed(app):
    with TestClient(app) as client:
        headers = login(client, "rita", "reviewer-pass")
        sample, image = analysed(client, headers)
        assert (image["width"], image["height"]) == (640, 480)
        # what `bloodcv analyze` finds on the same image (scripts/demo.sh): 36 cells, one neutrophil
        assert len(image["cells"]) == 36 and image["counts"]["labels"] == {"WBC": 1, "RBC": 35}
        wbc = white_cell(image)
        assert wbc["type"] == "neutrophil" and wbc["top3"][0]["type"] == "neutrophil"
        assert sorted(wbc["type_probabilities"]) == TYPES and abs(sum(wbc["type_probabilities"].values()) - 1) < 1e-4
        x1, y1, x2, y2 = wbc["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and wbc["entropy"] > 0
        assert image["differential"]["percent"]["neutrophil"] == 100.0 and image["differential"]["cells"] == 1
        s = client.get(f"/api/samples/{sample}").json()
        assert s["patient"] == "P-0001" and s["laboratory"]["cells"] == 1
        assert "only 1 of the 100 white cells" in s["laboratory"]["note"]


def test_corrections_change_the_counts_and_are_kept_with_user_and_time(app):
    with TestClient(app) as client:
        headers = login(client, "rita", "reviewer-pass")
        _, image = analysed(client, headers)
        wbc, rbc = white_cell(image), next(c for c in image["cells"] if c["label"] == "RBC")
        r = client.patch(f"/api/cells/{wbc['id']}", json={"type": "lymphocyte"}, headers=headers)
        assert r.status_code == 200 and r.json()["type"] == "lymphocyte" and r.json()["reviewed"]
        assert client.patch(f"/api/cells/{rbc['id']}", json={"deleted": True}, headers=headers).status_code == 200
        drawn = client.post(f"/api/images/{image['id']}/cells", json={"box": [10, 10, 90, 90], "type": "monocyte"}, headers=headers)
        assert drawn.status_code == 201 and drawn.json()["label"] == "WBC" and drawn.json()["origin"] == "user"
        now = client.get(f"/api/images/{image['id']}").json()
        assert now["counts"] == {"labels": {"WBC": 2, "RBC": 34}, "types": {"lymphocyte": 1, "monocyte": 1}}
        assert now["differential"]["percent"]["lymphocyte"] == 50.0 and now["differential"]["cells"] == 2
        history = client.get(f"/api/cells/{wbc['id']}/history").json()
        assert [(h["user"], h["action"]) for h in history] == [("rita", "type")]
        assert history[0]["before"]["type"] == "neutrophil" and history[0]["after"]["type"] == "lymphocyte"
        assert history[0]["at"].endswith("Z")
        # a type that is not the classifier's is refused, the cell unchanged
        assert client.patch(f"/api/cells/{wbc['id']}", json={"type": "dragon"}, headers=headers).status_code == 422
        assert client.get(f"/api/images/{image['id']}").json()["counts"]["types"]["lymphocyte"] == 1


def test_the_review_queue_puts_the_most_uncertain_cells_first(app):
    with TestClient(app) as client:
        headers = login(client, "rita", "reviewer-pass")
        _, image = analysed(client, headers)
        queue = client.get("/api/review-queue?limit=100").json()
        assert len(queue) == 36
        priorities = [c["priority"] for c in queue]
        assert priorities == sorted(priorities, reverse=True)
        lowest_score = min(image["cells"], key=lambda c: c["score"])
        assert queue[0]["id"] == lowest_score["id"] and queue[0]["priority"] == pytest.approx(1 - lowest_score["score"], abs=1e-4)
        # a reviewed cell leaves the queue
        client.patch(f"/api/cells/{queue[0]['id']}", json={"reviewed": True}, headers=headers)
        assert queue[0]["id"] not in [c["id"] for c in client.get("/api/review-queue?limit=100").json()]


def test_labelme_and_coco_exports_and_a_labelme_import(app, tmp_path):
    with TestClient(app) as client:
        headers = login(client, "rita", "reviewer-pass")
        sample, image = analysed(client, headers)
        wbc = white_cell(image)
        client.patch(f"/api/cells/{wbc['id']}", json={"type": "eosinophil"}, headers=headers)
        r = client.get(f"/api/samples/{sample}/export?format=labelme")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        z = zipfile.ZipFile(io.BytesIO(r.content))
        name = f"image_{image['id']:06d}"
        assert sorted(z.namelist()) == [f"{name}.jpg", f"{name}.json"]
        assert z.read(f"{name}.jpg") == SMEAR.read_bytes()
        doc = json.loads(z.read(f"{name}.json"))
        assert doc["imagePath"] == f"{name}.jpg" and (doc["imageWidth"], doc["imageHeight"]) == (640, 480) and doc["imageData"] is None
        assert len(doc["shapes"]) == 36 and all(s["shape_type"] == "rectangle" and len(s["points"]) == 2 for s in doc["shapes"])
        (typed,) = [s for s in doc["shapes"] if s["label"] not in ("RBC", "Platelets", "WBC")]
        assert typed["label"] == "eosinophil" and typed["points"] == [wbc["box"][:2], wbc["box"][2:]]
        # reviewed_only: nothing is reviewed yet
        empty = zipfile.ZipFile(io.BytesIO(client.get(f"/api/samples/{sample}/export?format=labelme&reviewed_only=true").content))
        assert empty.namelist() == []

        # edited in labelme: one red cell kept, a basophil drawn; imported back
        doc["shapes"] = [s for s in doc["shapes"] if s["label"] == "RBC"][:1] + [
            {"label": "basophil", "points": [[100, 100], [160, 150]], "shape_type": "rectangle"}]
        r = client.post(f"/api/images/{image['id']}/labelme", content=json.dumps(doc), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["counts"] == {"labels": {"RBC": 1, "WBC": 1}, "types": {"basophil": 1}} and r.json()["reviewed"]
        bad = dict(doc, shapes=[{"label": "unicorn", "points": [[0, 0], [5, 5]]}])
        r = client.post(f"/api/images/{image['id']}/labelme", content=json.dumps(bad), headers=headers)
        assert r.status_code == 422 and "unicorn" in r.json()["detail"]

        # COCO: the classifier recipe's "coco" source reads the typed cells back
        r = client.get(f"/api/samples/{sample}/export?format=coco&reviewed_only=true")
        zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "coco")
        cells = coco_samples(tmp_path / "coco", {t: t for t in TYPES}, TYPES, "lab")
        assert [(TYPES[c.label], c.box) for c in cells] == [("basophil", (100.0, 100.0, 160.0, 150.0))]
        assert cv2.imread(cells[0].file) is not None
        # ... as a source of the classifier recipe's config
        cfg = tc.load_config(None, {"classes": TYPES, "split": {"train": 1.0},
                                    "sources": [{"name": "lab", "kind": "coco", "root": str(tmp_path / "coco"),
                                                 "types": {t: t for t in TYPES}}]})
        samples, split = tc.samples_of(cfg, *tc.label_groups(cfg))
        assert samples == cells and split["train"] == [0]


def png_header_only(width, height):
    """A PNG that declares width x height pixels (a decompression bomb's header) with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_bad_uploads_are_refused_with_the_reason_and_nothing_stored(tmp_path, models):
    app = make_app(tmp_path, models, max_upload_bytes=200_000, max_image_pixels=1_000_000)
    with TestClient(app) as client:
        headers = login(client, "tom", "technician-pass")
        sample = new_sample(client, headers)
        smear = SMEAR.read_bytes()
        big = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))[1].tobytes()
        cases = [
            (b"%PDF-1.4 not an image", 415, "not an image"),
            (smear[: len(smear) // 2], 422, "damaged image"),
            (b"", 422, "empty"),
            (big, 413, "more than the limit of 200000"),
            (png_header_only(1200, 1000), 413, "1200x1000 pixels, more than the limit of 1000000"),
            (png_header_only(60000, 60000), 413, "decompression bomb"),
        ]
        for data, status, reason in cases:
            r = upload(client, headers, sample, data, "bad.png")
            assert r.status_code == status and reason in r.json()["detail"], (status, r.text)
        assert not list((tmp_path / "data" / "images").rglob("*.*"))
        assert client.get(f"/api/samples/{sample}").json()["images"] == []


def test_sessions_roles_csrf_and_unknown_ids(app):
    with TestClient(app) as client:
        assert client.get("/api/samples").status_code == 401
        r = client.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert client.get("/docs", follow_redirects=False).status_code == 303
        assert client.post("/api/login", json={"username": "rita", "password": "wrong"}).status_code == 401
        headers = login(client, "tom", "technician-pass")
        sample = new_sample(client, headers)
        # the cookie is HttpOnly and SameSite
        r = client.post("/api/login", json={"username": "tom", "password": "technician-pass"})
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        headers = {"X-CSRF-Token": r.json()["csrf_token"]}
        cookie = client.cookies.get("bloodcv_session")
        # a technician may not correct cells, nor see the review queue
        assert client.patch("/api/cells/1", json={"type": "monocyte"}, headers=headers).status_code == 403
        assert client.get("/api/review-queue").status_code == 403
        # changing requests need the session's CSRF token
        assert client.post("/api/samples", json={"patient": "P", "name": "x"}).status_code == 403
        assert client.post("/api/samples", json={"patient": "P", "name": "x"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
        # unknown ids
        assert client.get("/api/images/999").status_code == 404
        assert client.get("/api/samples/999").status_code == 404
        assert upload(client, headers, 999).status_code == 404
        # another session's CSRF token does not fit this session
        other = TestClient(app)
        other_headers = login(other, "rita", "reviewer-pass")
        assert client.post("/api/samples", json={"patient": "P", "name": "x"}, headers=other_headers).status_code == 403
        # after logout the old cookie is dead
        assert client.post("/api/logout", headers=headers).status_code == 200
        client.cookies.set("bloodcv_session", cookie)
        assert client.get(f"/api/samples/{sample}").status_code == 401


def test_sessions_expire(tmp_path, models):
    app = make_app(tmp_path, models, session_hours=0.5 / 3600)  # half a second
    with TestClient(app) as client:
        login(client, "tom", "technician-pass")
        assert client.get("/api/me").status_code == 200
        time.sleep(0.8)
        assert client.get("/api/me").status_code == 401


def test_failed_logins_are_throttled(app):
    with TestClient(app) as client:
        for _ in range(5):
            assert client.post("/api/login", json={"username": "rita", "password": "nope"}).status_code == 401
        r = client.post("/api/login", json={"username": "rita", "password": "reviewer-pass"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert client.post("/api/login", json={"username": "tom", "password": "technician-pass"}).status_code == 200


def test_a_restart_resumes_unfinished_jobs_and_a_failing_image_does_not_stop_the_others(tmp_path, models):
    stopped = make_app(tmp_path, models, run_worker=False)
    with TestClient(stopped) as client:
        headers = login(client, "tom", "technician-pass")
        sample = new_sample(client, headers)
        first = upload(client, headers, sample).json()["id"]
        flipped = cv2.imencode(".jpg", cv2.imread(str(SMEAR))[:, ::-1])[1].tobytes()
        broken = upload(client, headers, sample, flipped, "gone.jpg").json()["id"]
        third = upload(client, headers, sample, cv2.imencode(".png", cv2.imread(str(SMEAR)))[1].tobytes(), "smear.png").json()["id"]
    with stopped.state.sessions() as db:
        db.get(Image, first).status = "running"  # the server stopped during its analysis
        lost = db.get(Image, broken)
        (tmp_path / "data" / "images" / lost.stored_name[:2] / lost.stored_name).unlink()  # its file lost since
        db.commit()
    restarted = create_app(Settings(data_dir=tmp_path / "data"), models=models)
    with TestClient(restarted) as client:
        login(client, "tom", "technician-pass")
        assert wait_done(client, first)["status"] == "done"
        failed = wait_done(client, broken)
        assert failed["status"] == "failed" and "cannot read image" in failed["error"]
        assert len(wait_done(client, third)["cells"]) == 36


def test_pages_render_for_a_logged_in_user(app):
    with TestClient(app) as client:
        headers = login(client, "rita", "reviewer-pass")
        sample, image = analysed(client, headers)
        new_sample(client, headers, name="smear B", date="2026-11-15")
        for url in ["/", f"/samples/{sample}", f"/images/{image['id']}", "/review", "/patients/1", "/docs"]:
            r = client.get(url)
            assert r.status_code == 200 and "<html" in r.text.lower(), url
        assert 'name="csrf_token"' in client.get(f"/samples/{sample}").text
        assert client.get("/patients/1/differentials.png").content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/images/{image['id']}/file").content == SMEAR.read_bytes()
        spec = client.get("/openapi.json").json()
        assert {"/api/login", "/api/samples", "/api/samples/{sample_id}/images", "/api/images/{image_id}",
                "/api/cells/{cell_id}", "/api/review-queue", "/api/samples/{sample_id}/export"} <= set(spec["paths"])
        rows = client.get("/api/patients/1/differentials.csv").text.splitlines()
        assert rows[0] == "date,sample,name,cells,uncertain," + ",".join(TYPES)
        assert rows[1].startswith("2026-11-01,1,smear A,1,0,") and rows[1].endswith("100.0") and rows[2].startswith("2026-11-15,2,smear B,0")


def test_the_command_line_refuses_bad_settings_in_one_line(tmp_path):
    import subprocess
    import sys
    run = lambda *args: subprocess.run([sys.executable, "-m", "bloodcv.web", "--data", str(tmp_path / "d"), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    r = run("--db", "nosuch://x")
    assert r.returncode == 2 and r.stderr.startswith("bloodcv serve: cannot open the database nosuch://x")
    r = run("--create-user", "bob:short")
    assert r.returncode == 2 and r.stderr.strip() == "bloodcv serve: a password has at least 8 characters"
    r = run("--create-user", "bob:long-enough:reviewer")
    assert r.returncode == 0 and "created reviewer bob" in r.stderr
