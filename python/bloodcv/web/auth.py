"""Accounts: scrypt password hashes, login sessions in the database, CSRF tokens, failed-login throttling."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import ROLES, LoginSession, User, now

# scrypt with N = 2^14, r = 8: 16 MiB and about 50 ms a hash, so guessing is memory-bound and slow.
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_SCRYPT["maxmem"], dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_new_user(username: str, password: str, role: str) -> None:
    if not (1 <= len(username) <= 64) or not all(c.isalnum() or c in "._-" for c in username):
        raise ValueError("a username is 1 to 64 letters, digits, '.', '_' or '-'")
    if len(password) < 8:
        raise ValueError("a password has at least 8 characters")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def create_user(db: Session, username: str, password: str, role: str) -> User:
    check_new_user(username, password, role)
    if db.scalar(select(User).where(User.username == username)):
        raise ValueError(f"user {username!r} exists already")
    user = User(username=username, password_hash=hash_password(password), role=role)
    db.add(user)
    db.commit()
    return user


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(db: Session, user: User, lifetime: dt.timedelta) -> tuple[str, LoginSession]:
    """A new login session for user: (the cookie's token, the stored session with its CSRF token)."""
    token = secrets.token_urlsafe(32)
    session = LoginSession(token_hash=token_hash(token), csrf_token=secrets.token_urlsafe(32), user_id=user.id,
                           expires_at=now() + lifetime)
    db.add(session)
    db.commit()
    return token, session


def find_session(db: Session, token: Optional[str]) -> Optional[LoginSession]:
    """The live session of a cookie's token; expired ones are deleted."""
    if not token:
        return None
    session = db.scalar(select(LoginSession).where(LoginSession.token_hash == token_hash(token)))
    if session is None:
        return None
    if session.expires_at <= now():
        db.delete(session)
        db.commit()
        return None
    return session


def csrf_matches(session: LoginSession, given: Optional[str]) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf_token, given)


class LoginThrottle:
    """At most `attempts` failed logins per (username, client) in `window` seconds; then refused until the
    oldest failure leaves the window. In memory: a restart forgets, which only shortens a lock-out."""

    def __init__(self, attempts: int = 5, window: float = 900.0):
        self.attempts, self.window = attempts, window
        self._failures: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key) -> deque:
        q = self._failures[key]
        while q and q[0] <= time.monotonic() - self.window:
            q.popleft()
        return q

    def retry_after(self, username: str, client: str) -> float:
        """Seconds until a login may be tried again; 0 when it may now."""
        with self._lock:
            q = self._recent((username, client))
            return 0.0 if len(q) < self.attempts else max(1.0, q[0] + self.window - time.monotonic())

    def failed(self, username: str, client: str) -> None:
        with self._lock:
            self._recent((username, client)).append(time.monotonic())

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username, client), None)
