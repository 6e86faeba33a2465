"""bloodcv serve on PostgreSQL: a real server the test starts itself (Debian's postgresql), the same API flow
as on SQLite, and the records there afterwards."""
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("psycopg2")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bloodcv.web import Settings, auth, create_app  # noqa: E402
from pg_server import PostgresServer, binaries  # noqa: E402
from web_helpers import login, upload, wait_done  # noqa: E402

pytestmark = pytest.mark.skipif(binaries() is None, reason="PostgreSQL's server (initdb, pg_ctl) is not installed")


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


def test_the_application_keeps_its_records_in_postgresql(postgres, tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "data", db_url=postgres))
    with app.state.sessions() as db:
        auth.create_user(db, "rita", "reviewer-pass", "reviewer")
    with TestClient(app) as client:
        headers = login(client, "rita", "reviewer-pass")
        sample = client.post("/api/samples", json={"patient": "PG-7", "name": "on postgres"}, headers=headers).json()["id"]
        image = wait_done(client, upload(client, headers, sample).json()["id"])
        assert image["status"] == "done" and image["counts"]["labels"] == {"WBC": 1, "RBC": 35}
        (wbc,) = [c for c in image["cells"] if c["label"] == "WBC"]
        assert client.patch(f"/api/cells/{wbc['id']}", json={"type": "monocyte"}, headers=headers).status_code == 200
        assert client.get(f"/api/images/{image['id']}").json()["counts"]["types"] == {"monocyte": 1}
        # an id that is not a number never reaches SQL; a quote in a value is data, not SQL
        assert client.get("/api/images/1;DROP TABLE cells").status_code == 422
        quoted = client.post("/api/samples", json={"patient": "x'); DROP TABLE cells; --", "name": "q"}, headers=headers)
        assert quoted.status_code == 201
    engine = create_engine(postgres)
    with engine.connect() as connection:
        assert connection.execute(text("select count(*) from cells where deleted = false")).scalar() == 36
        assert connection.execute(text("select type from cells where id = :id"), {"id": wbc["id"]}).scalar() == "monocyte"
        assert connection.execute(text("select action from corrections")).scalars().all() == ["type"]
        assert connection.execute(text("select code from patients order by id")).scalars().all() == ["PG-7", "x'); DROP TABLE cells; --"]
    engine.dispose()
