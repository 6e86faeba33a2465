"""A real PostgreSQL server for tests, started in a temporary directory with Debian's initdb and pg_ctl (as the
postgres account when the tests run as root, which PostgreSQL refuses), stopped afterwards."""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def binaries():
    """The folder of initdb and pg_ctl, or None where PostgreSQL's server is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.bin = binaries()
        # directly under /tmp: pytest's own folders are private to this user, and the server runs as postgres
        self.root = Path(tempfile.mkdtemp(prefix="bloodcv-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args, timeout=120):
        command = [str(a) for a in args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout)

    def start(self) -> str:
        """Starts the server; returns the SQLAlchemy URL of its database bloodcv."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            os.chmod(self.root, 0o777)  # the postgres account writes the cluster and the socket here
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1")
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "bloodcv")
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/bloodcv"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
