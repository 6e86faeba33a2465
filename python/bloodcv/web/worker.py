"""The analysis worker: a thread that takes queued images one at a time, runs the library's Pipeline on
them and stores the cells. Jobs are rows of the images table, so a restarted server finds the unfinished
ones (running ones go back to the queue) and a failing image is marked failed with the reason while the
others go on."""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from sqlalchemy import select, update

from .db import Cell, Image, now

log = logging.getLogger("bloodcv.web")


def cells_of_report(report: dict, image_id: int) -> list[Cell]:
    """The cells of a bloodcv.analysis report (AnalysisResult.to_json) as rows."""
    rows = []
    for c in report["cells"]:
        x1, y1, x2, y2 = c["box"]
        rows.append(Cell(image_id=image_id, x1=x1, y1=y1, x2=x2, y2=y2, label=c["label"], score=c["score"],
                         type=c.get("type"), type_score=c.get("type_score"),
                         probabilities=json.dumps(c.get("type_probabilities", {})), entropy=c.get("type_entropy"),
                         origin="model"))
    return rows


class AnalysisWorker:
    def __init__(self, sessions, store, make_pipeline: Callable, poll_seconds: float = 0.5):
        self.sessions, self.store, self.make_pipeline = sessions, store, make_pipeline
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipeline = None

    def start(self) -> None:
        with self.sessions() as db:  # a job that was running when the server stopped starts again
            db.execute(update(Image).where(Image.status == "running").values(status="queued"))
            db.commit()
        self._thread = threading.Thread(target=self._run, name="bloodcv-analysis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=60)

    def notify(self) -> None:
        """A new image is queued: look now instead of at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.run_one():
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def run_one(self) -> bool:
        """Analyses the oldest queued image; False when there is none."""
        with self.sessions() as db:
            image = db.scalar(select(Image).where(Image.status == "queued").order_by(Image.id).limit(1))
            if image is None:
                return False
            image.status = "running"
            db.commit()
            image_id, stored_name = image.id, image.stored_name
        try:
            if self._pipeline is None:
                self._pipeline = self.make_pipeline()
            path = self.store.path(stored_name)
            report = json.loads(self._pipeline.analyze(str(path)).to_json(""))
            with self.sessions() as db:
                image = db.get(Image, image_id)
                db.add_all(cells_of_report(report, image_id))
                image.status, image.error, image.analysed_at = "done", "", now()
                db.commit()
            log.info("image %d analysed: %d cells", image_id, len(report["cells"]))
        except Exception as e:  # noqa: BLE001 - any failure of one image is that image's, and said
            log.warning("image %d failed: %s", image_id, e)
            with self.sessions() as db:
                image = db.get(Image, image_id)
                image.status, image.error = "failed", f"{type(e).__name__}: {e}"
                db.commit()
        return True
