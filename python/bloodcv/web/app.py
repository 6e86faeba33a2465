"""The FastAPI application: HTML pages for people, JSON under /api for programs, both over the same records.

Every route but the login page and POST /api/login needs a session (an HttpOnly, SameSite=Strict cookie);
every request that changes something also needs the session's CSRF token (form field csrf_token, or header
X-CSRF-Token). Roles: a technician creates samples and uploads images, a reviewer also corrects cells,
works the review queue and exports or imports annotations, an administrator also manages accounts.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import auth, records
from .db import ROLES, Cell, Correction, Image, LoginSession, Patient, Sample, User, make_engine, make_sessionmaker
from .storage import ImageStore, UploadError
from .worker import AnalysisWorker

log = logging.getLogger("bloodcv.web")
HERE = Path(__file__).resolve().parent
COOKIE = "bloodcv_session"
LOGIN_CSRF_COOKIE = "bloodcv_login_csrf"
RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass
class Settings:
    data_dir: Path
    db_url: Optional[str] = None             # None: SQLite in data_dir/bloodcv.sqlite3
    detector: Optional[str] = None           # None: the default models
    classifier: Optional[str] = None
    max_upload_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    session_hours: float = 8.0
    secure_cookies: bool = False             # set behind HTTPS
    login_attempts: int = 5                  # failed logins per user and client in 15 minutes
    run_worker: bool = True
    extra: dict = field(default_factory=dict)

    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{Path(self.data_dir).resolve() / 'bloodcv.sqlite3'}"


class Models:
    """The library's pipeline of the configured model files, and their label names."""

    def __init__(self, detector: Optional[str], classifier: Optional[str]):
        import bloodcv
        models = Path(bloodcv.default_model_dir())
        self.detector = bloodcv.TorchScriptDetector(detector or str(models / "cell_detector.pt"))
        self.classifier = bloodcv.TorchScriptClassifier(classifier or str(models / "wbc_classifier.pt"))
        self.pipeline = bloodcv.Pipeline(self.detector, self.classifier)
        self.detector_labels = list(self.detector.labels())
        self.types = list(self.classifier.labels())
        self.white_label = "WBC"  # the detector label the pipeline classifies (Pipeline's classify_labels)


# --- request and response bodies ---------------------------------------------------------------------------
class LoginBody(BaseModel):
    username: str
    password: str


class SampleBody(BaseModel):
    patient: str = Field(..., min_length=1, max_length=64, description="the patient's pseudonymous code (never a name)")
    name: str = Field(..., min_length=1, max_length=128)
    date: Optional[dt.date] = None
    stain: str = Field("", max_length=64)
    laboratory: str = Field("", max_length=128)
    notes: str = Field("", max_length=4000)


class CellPatch(BaseModel):
    type: Optional[str] = Field(None, description="a cell type, or null to leave the cell untyped")
    deleted: Optional[bool] = None
    box: Optional[List[float]] = Field(None, description="[x1, y1, x2, y2] in image pixels")
    reviewed: Optional[bool] = None


class NewCell(BaseModel):
    box: List[float] = Field(..., description="[x1, y1, x2, y2] in image pixels")
    label: Optional[str] = Field(None, description="a detector label; default the white-cell label")
    type: Optional[str] = None


class NotLoggedIn(Exception):
    pass


def create_app(settings: Settings, models: Optional[Models] = None) -> FastAPI:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url())
    sessions = make_sessionmaker(engine)
    store = ImageStore(data_dir, settings.max_upload_bytes, settings.max_image_pixels)
    models = models or Models(settings.detector, settings.classifier)
    worker = AnalysisWorker(sessions, store, lambda: models.pipeline)
    throttle = auth.LoginThrottle(settings.login_attempts)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    lifetime = dt.timedelta(hours=settings.session_hours)

    app = FastAPI(title="bloodcv", description=__doc__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.sessions, app.state.worker, app.state.models = settings, sessions, worker, models
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.on_event("startup")
    def _start():
        if settings.run_worker:
            worker.start()

    @app.on_event("shutdown")
    def _stop():
        worker.stop()

    # --- dependencies ---------------------------------------------------------------------------------------
    def get_db():
        with sessions() as db:
            yield db

    async def session_of(request: Request, db: Session = Depends(get_db)) -> LoginSession:
        session = auth.find_session(db, request.cookies.get(COOKIE))
        if session is None:
            if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
                raise HTTPException(401, "log in first (POST /api/login)")
            raise NotLoggedIn()
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            given = request.headers.get("x-csrf-token")
            if given is None and request.headers.get("content-type", "").startswith(("multipart/", "application/x-www-form")):
                given = (await request.form()).get("csrf_token")
            if not auth.csrf_matches(session, given):
                raise HTTPException(403, "missing or wrong CSRF token")
        return session

    def role(minimum: str):
        def check(session: LoginSession = Depends(session_of)) -> LoginSession:
            if RANK[session.user.role] < RANK[minimum]:
                raise HTTPException(403, f"this needs the {minimum} role; {session.user.username} is a {session.user.role}")
            return session
        return check

    technician, reviewer, administrator = role("technician"), role("reviewer"), role("administrator")

    @app.exception_handler(NotLoggedIn)
    async def _to_login(request: Request, _exc):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    def page(request: Request, name: str, session: Optional[LoginSession], **context):
        return templates.TemplateResponse(name, {"request": request, "session": session, "user": session.user if session else None,
                                                 "csrf": session.csrf_token if session else "", **context})

    def found(db: Session, kind, ident: int, what: str):
        row = db.get(kind, ident)
        if row is None:
            raise HTTPException(404, f"no {what} {ident}")
        return row

    def set_cookie(response: Response, token: str) -> None:
        response.set_cookie(COOKIE, token, max_age=max(1, int(lifetime.total_seconds())), httponly=True, samesite="strict",
                            secure=settings.secure_cookies, path="/")

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "?"

    def login(db: Session, request: Request, username: str, password: str) -> tuple[str, LoginSession]:
        client = client_of(request)
        wait = throttle.retry_after(username, client)
        if wait:
            raise HTTPException(429, f"too many failed logins: try again in {int(wait)} s", headers={"Retry-After": str(int(wait))})
        user = db.scalar(select(User).where(User.username == username))
        if user is None or not auth.verify_password(password, user.password_hash):
            throttle.failed(username, client)
            raise HTTPException(401, "wrong username or password")
        throttle.succeeded(username, client)
        return auth.open_session(db, user, lifetime)

    # --- records ------------------------------------------------------------------------------------------------
    def patient_for(db: Session, code: str) -> Patient:
        patient = db.scalar(select(Patient).where(Patient.code == code))
        if patient is None:
            patient = Patient(code=code)
            db.add(patient)
            db.flush()
        return patient

    def new_sample(db: Session, body: SampleBody, user: User) -> Sample:
        sample = Sample(patient_id=patient_for(db, body.patient.strip()).id, name=body.name.strip(), collected_on=body.date,
                        stain=body.stain, laboratory=body.laboratory, notes=body.notes, created_by=user.id)
        db.add(sample)
        db.commit()
        return sample

    async def upload(db: Session, request: Request, sample: Sample, file: UploadFile, user: User) -> Image:
        declared = int(request.headers.get("content-length") or 0)
        if declared > settings.max_upload_bytes + 1024 * 1024:  # refuse before reading when the client says how much
            raise HTTPException(413, f"the upload is {declared} bytes, more than the limit of {settings.max_upload_bytes}")
        data = await file.read(settings.max_upload_bytes + 1)
        shown = Path(file.filename or "upload").name[:255]
        try:
            stored = store.store(data, shown)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        image = Image(sample_id=sample.id, sha256=stored.sha256, stored_name=stored.stored_name, filename=shown,
                      width=stored.width, height=stored.height, status="queued", uploaded_by=user.id)
        db.add(image)
        db.commit()
        worker.notify()
        return image

    def image_json(image: Image) -> dict:
        out = {"id": image.id, "sample": image.sample_id, "filename": image.filename, "width": image.width,
               "height": image.height, "status": image.status, "reviewed": image.reviewed}
        if image.status == "failed":
            out["error"] = image.error
        if image.status == "done":
            cells = records.live(image.cells)
            out["cells"] = [records.cell_json(c) for c in cells]
            out["counts"] = records.counts(cells)
            out["differential"] = records.differential(cells, models.types)
        return out

    def sample_json(sample: Sample) -> dict:
        return {"id": sample.id, "patient": sample.patient.code, "name": sample.name,
                "date": sample.collected_on.isoformat() if sample.collected_on else None, "stain": sample.stain,
                "laboratory": sample.laboratory, "notes": sample.notes,
                "images": [{"id": i.id, "filename": i.filename, "status": i.status} for i in sample.images],
                **records.sample_differential(sample, models.types)}

    def audit(db: Session, cell: Cell, user: User, action: str, before: dict, after: dict) -> None:
        db.add(Correction(cell_id=cell.id, user_id=user.id, action=action, before=json.dumps(before), after=json.dumps(after)))

    def check_type(value: Optional[str]) -> None:
        if value is not None and value not in models.types and value != "uncertain":
            raise HTTPException(422, f"unknown type {value!r}: one of {', '.join(models.types)}, or null")

    def check_box(image: Image, box: List[float]) -> tuple:
        if len(box) != 4:
            raise HTTPException(422, "box is [x1, y1, x2, y2]")
        x1, y1, x2, y2 = max(0.0, box[0]), max(0.0, box[1]), min(float(image.width), box[2]), min(float(image.height), box[3])
        if not (x2 > x1 and y2 > y1):
            raise HTTPException(422, f"box {box} has no area inside the {image.width}x{image.height} image")
        return x1, y1, x2, y2

    def patch_cell(db: Session, cell: Cell, patch: CellPatch, user: User) -> Cell:
        given = patch.__fields_set__
        before = records.cell_json(cell)
        actions = []
        if "type" in given and patch.type != cell.type:
            check_type(patch.type)
            cell.type, cell.type_score = patch.type, (1.0 if patch.type else None)
            actions.append("type")
        if "deleted" in given and patch.deleted is not None and patch.deleted != cell.deleted:
            cell.deleted = patch.deleted
            actions.append("delete" if patch.deleted else "restore")
        if "box" in given and patch.box is not None:
            cell.x1, cell.y1, cell.x2, cell.y2 = check_box(cell.image, patch.box)
            actions.append("box")
        if actions or patch.reviewed:
            cell.reviewed = True if patch.reviewed is None else patch.reviewed
            audit(db, cell, user, "+".join(actions) or "review", before, records.cell_json(cell))
        db.commit()
        return cell

    def export_images(sample: Sample, reviewed_only: bool) -> List[Image]:
        return [i for i in sample.images if i.status == "done" and (i.reviewed or not reviewed_only)]

    # --- pages ----------------------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str = ""):
        token = secrets.token_urlsafe(32)
        response = templates.TemplateResponse("login.html", {"request": request, "session": None, "user": None,
                                                              "login_csrf": token, "next": next if next.startswith("/") else "/",
                                                              "error": error})
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=settings.secure_cookies)
        return response

    @app.post("/login", include_in_schema=False)
    def login_form(request: Request, username: str = Form(...), password: str = Form(...), csrf_token: str = Form(""),
                   next: str = Form("/"), db: Session = Depends(get_db)):
        expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
        if not expected or not secrets.compare_digest(expected, csrf_token):
            raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
        try:
            token, _ = login(db, request, username, password)
        except HTTPException as e:
            return RedirectResponse(f"/login?error={e.detail}", status_code=303)
        response = RedirectResponse(next if next.startswith("/") and not next.startswith("//") else "/", status_code=303)
        set_cookie(response, token)
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout_form(session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        db.delete(db.get(LoginSession, session.id))
        db.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        samples = db.scalars(select(Sample).order_by(Sample.id.desc())).all()
        return page(request, "samples.html", session, samples=samples)

    @app.post("/samples", include_in_schema=False)
    def new_sample_form(patient: str = Form(...), name: str = Form(...), date: str = Form(""), stain: str = Form(""),
                        laboratory: str = Form(""), notes: str = Form(""), session: LoginSession = Depends(technician),
                        db: Session = Depends(get_db)):
        try:
            body = SampleBody(patient=patient, name=name, date=date or None, stain=stain, laboratory=laboratory, notes=notes)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        sample = new_sample(db, body, session.user)
        return RedirectResponse(f"/samples/{sample.id}", status_code=303)

    @app.get("/samples/{sample_id}", response_class=HTMLResponse, include_in_schema=False)
    def sample_page(request: Request, sample_id: int, session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        sample = found(db, Sample, sample_id, "sample")
        return page(request, "sample.html", session, sample=sample, summary=sample_json(sample), types=models.types)

    @app.post("/samples/{sample_id}/images", include_in_schema=False)
    async def upload_form(request: Request, sample_id: int, file: UploadFile = File(...),
                          session: LoginSession = Depends(technician), db: Session = Depends(get_db)):
        sample = found(db, Sample, sample_id, "sample")
        await upload(db, request, sample, file, session.user)
        return RedirectResponse(f"/samples/{sample.id}", status_code=303)

    @app.get("/images/{image_id}", response_class=HTMLResponse, include_in_schema=False)
    def viewer(request: Request, image_id: int, session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        image = found(db, Image, image_id, "image")
        return page(request, "viewer.html", session, image=image, types=models.types, labels=models.detector_labels,
                    can_edit=RANK[session.user.role] >= RANK["reviewer"])

    @app.get("/images/{image_id}/file", include_in_schema=False)
    def image_file(image_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        image = found(db, Image, image_id, "image")
        return FileResponse(store.path(image.stored_name), headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page(request: Request, session: LoginSession = Depends(reviewer), db: Session = Depends(get_db)):
        return page(request, "review.html", session, queue=queue(db, 100))

    @app.get("/patients/{patient_id}", response_class=HTMLResponse, include_in_schema=False)
    def patient_page(request: Request, patient_id: int, session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        patient = found(db, Patient, patient_id, "patient")
        return page(request, "patient.html", session, patient=patient, rows=patient_rows(patient), types=models.types)

    @app.get("/patients/{patient_id}/differentials.png", include_in_schema=False)
    def patient_plot(patient_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        from .plots import differentials_over_time
        patient = found(db, Patient, patient_id, "patient")
        return Response(differentials_over_time(patient_rows(patient), models.types, patient.code), media_type="image/png")

    @app.get("/users", response_class=HTMLResponse, include_in_schema=False)
    def users_page(request: Request, session: LoginSession = Depends(administrator), db: Session = Depends(get_db)):
        return page(request, "users.html", session, users=db.scalars(select(User).order_by(User.id)).all(), roles=ROLES)

    @app.post("/users", include_in_schema=False)
    def new_user_form(username: str = Form(...), password: str = Form(...), role: str = Form(...),
                      _session: LoginSession = Depends(administrator), db: Session = Depends(get_db)):
        try:
            auth.create_user(db, username, password, role)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return RedirectResponse("/users", status_code=303)

    @app.get("/docs", include_in_schema=False)
    def docs(_session: LoginSession = Depends(session_of)):
        return get_swagger_ui_html(openapi_url="/openapi.json", title="bloodcv API",
                                   swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger-ui/swagger-ui.css", swagger_favicon_url="/static/favicon.svg")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_session: LoginSession = Depends(session_of)):
        return JSONResponse(app.openapi())

    # --- API --------------------------------------------------------------------------------------------------------
    @app.post("/api/login", tags=["accounts"])
    def api_login(body: LoginBody, request: Request, db: Session = Depends(get_db)):
        """Opens a session: sets the session cookie and returns the CSRF token that changing requests send as
        the X-CSRF-Token header. 401 on a wrong password, 429 after too many failures."""
        token, session = login(db, request, body.username, body.password)
        response = JSONResponse({"username": session.user.username, "role": session.user.role, "csrf_token": session.csrf_token})
        set_cookie(response, token)
        return response

    @app.post("/api/logout", tags=["accounts"])
    def api_logout(session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        db.delete(db.get(LoginSession, session.id))
        db.commit()
        response = JSONResponse({"logged_out": True})
        response.delete_cookie(COOKIE)
        return response

    @app.get("/api/me", tags=["accounts"])
    def api_me(session: LoginSession = Depends(session_of)):
        return {"username": session.user.username, "role": session.user.role, "csrf_token": session.csrf_token}

    @app.get("/api/samples", tags=["records"])
    def api_samples(_session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        return [{"id": s.id, "patient": s.patient.code, "name": s.name, "images": len(s.images)}
                for s in db.scalars(select(Sample).order_by(Sample.id)).all()]

    @app.post("/api/samples", tags=["records"], status_code=201)
    def api_new_sample(body: SampleBody, session: LoginSession = Depends(technician), db: Session = Depends(get_db)):
        """Creates a sample of a patient (by pseudonymous code; a new code makes a new patient). Returns {"id"}."""
        return {"id": new_sample(db, body, session.user).id}

    @app.get("/api/samples/{sample_id}", tags=["records"])
    def api_sample(sample_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        """The sample with its images, counts and differentials (its first 100 white cells, and all)."""
        return sample_json(found(db, Sample, sample_id, "sample"))

    @app.post("/api/samples/{sample_id}/images", tags=["records"], status_code=202)
    async def api_upload(request: Request, sample_id: int, file: UploadFile = File(...),
                         session: LoginSession = Depends(technician), db: Session = Depends(get_db)):
        """Uploads an image (multipart field "file"): stored, queued for analysis, answered at once with
        {"id", "status"}. 413 over the size or pixel limit, 415 not an image, 422 damaged."""
        image = await upload(db, request, found(db, Sample, sample_id, "sample"), file, session.user)
        return {"id": image.id, "status": image.status}

    @app.get("/api/images/{image_id}", tags=["analysis"])
    def api_image(image_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        """status queued|running|done|failed (with error); when done, cells (id, box [x1, y1, x2, y2] in image
        pixels, label, type, score, type_probabilities, top3, entropy, ...), counts and differential."""
        return image_json(found(db, Image, image_id, "image"))

    @app.post("/api/images/{image_id}/reviewed", tags=["analysis"])
    def api_image_reviewed(image_id: int, session: LoginSession = Depends(reviewer), db: Session = Depends(get_db)):
        """Marks an image reviewed (its cells all looked at): exports can keep only reviewed images."""
        image = found(db, Image, image_id, "image")
        image.reviewed = True
        for c in image.cells:
            if not c.reviewed:
                c.reviewed = True
                audit(db, c, session.user, "review", {}, {"reviewed": True})
        db.commit()
        return image_json(image)

    @app.patch("/api/cells/{cell_id}", tags=["analysis"])
    def api_patch_cell(cell_id: int, patch: CellPatch, session: LoginSession = Depends(reviewer), db: Session = Depends(get_db)):
        """Corrects a cell: its type (a type or null), deleted (a false detection), its box, or reviewed. The
        change is kept with user and time (GET /api/cells/{id}/history)."""
        return records.cell_json(patch_cell(db, found(db, Cell, cell_id, "cell"), patch, session.user))

    @app.post("/api/images/{image_id}/cells", tags=["analysis"], status_code=201)
    def api_new_cell(image_id: int, body: NewCell, session: LoginSession = Depends(reviewer), db: Session = Depends(get_db)):
        """Adds a cell the detector missed."""
        image = found(db, Image, image_id, "image")
        label = body.label or models.white_label
        if label not in models.detector_labels:
            raise HTTPException(422, f"unknown label {label!r}: one of {', '.join(models.detector_labels)}")
        check_type(body.type)
        x1, y1, x2, y2 = check_box(image, body.box)
        cell = Cell(image_id=image.id, x1=x1, y1=y1, x2=x2, y2=y2, label=label, score=1.0, type=body.type,
                    type_score=1.0 if body.type else None, probabilities="{}", origin="user", reviewed=True)
        image.cells.append(cell)
        db.flush()
        audit(db, cell, session.user, "add", {}, records.cell_json(cell))
        db.commit()
        return records.cell_json(cell)

    @app.get("/api/cells/{cell_id}/history", tags=["analysis"])
    def api_cell_history(cell_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        """The audit trail of a cell: every correction with user and time (UTC)."""
        found(db, Cell, cell_id, "cell")
        rows = db.scalars(select(Correction).where(Correction.cell_id == cell_id).order_by(Correction.id)).all()
        return [{"user": r.user.username, "at": r.at.isoformat() + "Z", "action": r.action, "before": json.loads(r.before or "{}"),
                 "after": json.loads(r.after or "{}")} for r in rows]

    def queue(db: Session, limit: int) -> list:
        cells = db.scalars(select(Cell).join(Image).where(Image.status == "done", Cell.deleted.is_(False),
                                                         Cell.reviewed.is_(False))).all()
        return records.review_queue(cells, len(models.types), limit)

    @app.get("/api/review-queue", tags=["active learning"])
    def api_review_queue(limit: int = 50, _session: LoginSession = Depends(reviewer), db: Session = Depends(get_db)):
        """Cells not yet reviewed, the most uncertain first: priority is the classifier's normalised entropy, or
        1 - the detector score where that is higher (a box the detector barely kept)."""
        return queue(db, max(1, min(limit, 1000)))

    @app.get("/api/samples/{sample_id}/export", tags=["active learning"])
    def api_export(sample_id: int, format: str = "labelme", reviewed_only: bool = False,
                   _session: LoginSession = Depends(reviewer), db: Session = Depends(get_db)):
        """A zip of the sample's analysed images and cells: format=labelme (one labelme JSON beside each image)
        or coco (annotations.json and images/; `python -m bloodcv.train classifier` takes it as a source of
        kind "coco"). reviewed_only keeps the images marked reviewed."""
        sample = found(db, Sample, sample_id, "sample")
        if format not in ("labelme", "coco"):
            raise HTTPException(422, f"format must be labelme or coco, got {format!r}")
        data = records.export_zip(export_images(sample, reviewed_only), store, format, models.detector_labels, models.types)
        name = f"sample_{sample.id}_{format}.zip"
        return Response(data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/api/images/{image_id}/labelme", tags=["active learning"])
    async def api_import_labelme(request: Request, image_id: int, session: LoginSession = Depends(reviewer),
                                 db: Session = Depends(get_db)):
        """Replaces an image's cells by those of a labelme JSON file (the body), e.g. corrected in labelme
        after an export; the old cells are kept as deleted, every change in the audit trail."""
        image = found(db, Image, image_id, "image")
        try:
            document = json.loads(await request.body())
            cells = records.labelme_cells(document, image, models.detector_labels, models.types, models.white_label)
        except ValueError as e:
            raise HTTPException(422, f"labelme import: {e}") from None
        for c in records.live(image.cells):
            c.deleted = True
            audit(db, c, session.user, "import", {"deleted": False}, {"deleted": True})
        image.cells.extend(cells)
        db.flush()
        for c in cells:
            audit(db, c, session.user, "import", {}, records.cell_json(c))
        image.status, image.reviewed = "done", True
        db.commit()
        return image_json(image)

    def patient_rows(patient: Patient) -> list:
        rows = []
        for s in patient.samples:
            d = records.sample_differential(s, models.types)
            rows.append({"sample": s.id, "name": s.name, "date": s.collected_on.isoformat() if s.collected_on else "",
                         "cells": d["laboratory"]["cells"], "uncertain": d["laboratory"]["uncertain"],
                         "percent": d["laboratory"]["percent"], "note": d["laboratory"]["note"], "counts": d["counts"]})
        return rows

    @app.get("/api/patients/{patient_id}/differentials", tags=["data analysis"])
    def api_patient_differentials(patient_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        """Each sample's laboratory differential (first 100 white cells), by collection date."""
        return patient_rows(found(db, Patient, patient_id, "patient"))

    @app.get("/api/patients/{patient_id}/differentials.csv", tags=["data analysis"])
    def api_patient_csv(patient_id: int, _session: LoginSession = Depends(session_of), db: Session = Depends(get_db)):
        """The same as CSV: date, sample, name, cells, uncertain, then one percent column per type."""
        patient = found(db, Patient, patient_id, "patient")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["date", "sample", "name", "cells", "uncertain", *models.types])
        for r in patient_rows(patient):
            writer.writerow([r["date"], r["sample"], r["name"], r["cells"], r["uncertain"],
                             *[f"{r['percent'].get(t, 0.0):.1f}" if r["cells"] else "" for t in models.types]])
        return Response(out.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="patient_{patient.id}_differentials.csv"'})

    return app
