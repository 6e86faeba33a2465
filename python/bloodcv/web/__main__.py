"""`python -m bloodcv.web` (also `bloodcv serve`): runs the laboratory application with uvicorn.

    python -m bloodcv.web [--host 127.0.0.1] [--port 8000] [--data DIR] [--db URL] [--admin USER:PASSWORD]
    python -m bloodcv.web --data DIR [--db URL] --create-user USER:PASSWORD[:ROLE]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .db import ROLES


def parse_user(text: str, default_role: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) == 2:
        return parts[0], parts[1], default_role
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise argparse.ArgumentTypeError("expected USER:PASSWORD or USER:PASSWORD:ROLE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bloodcv serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--data", type=Path, default=Path("bloodcv-data"), help="folder for images and the SQLite database (default: %(default)s)")
    p.add_argument("--db", default=None, help="database URL, e.g. postgresql://user@host/db (default: SQLite in --data)")
    p.add_argument("--detector", default=None, help="detector model file (default: the bundled one)")
    p.add_argument("--classifier", default=None, help="white-cell classifier model file (default: the bundled one)")
    p.add_argument("--admin", metavar="USER:PASSWORD", help="create this administrator first if absent")
    p.add_argument("--create-user", metavar="USER:PASSWORD[:ROLE]",
                   help=f"create an account (role {', '.join(ROLES)}; default technician) and exit")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted (default: %(default)s)")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from sqlalchemy import select

    from . import auth
    from .app import Settings
    from .db import User, make_engine, make_sessionmaker
    settings = Settings(data_dir=args.data, db_url=args.db, detector=args.detector, classifier=args.classifier,
                        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), secure_cookies=args.secure_cookies)
    args.data.mkdir(parents=True, exist_ok=True)
    try:
        sessions = make_sessionmaker(make_engine(settings.database_url()))
        for text, role in ((args.create_user, "technician"), (args.admin, "administrator")):
            if not text:
                continue
            username, password, role = parse_user(text, role)
            with sessions() as db:
                if text is args.admin and db.scalar(select(User).where(User.username == username)):
                    continue
                auth.create_user(db, username, password, role)
                print(f"created {role} {username}", file=sys.stderr)
    except (ValueError, argparse.ArgumentTypeError) as e:
        print(f"bloodcv serve: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a database that cannot be reached, said in one line
        print(f"bloodcv serve: cannot open the database {settings.database_url()}: {e}", file=sys.stderr)
        return 2
    if args.create_user:
        return 0

    import uvicorn
    from .app import create_app
    try:
        app = create_app(settings)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"bloodcv serve: cannot load the models: {e}", file=sys.stderr)
        return 2
    print(f"bloodcv serve: http://{args.host}:{args.port}/ (data in {args.data.resolve()})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
