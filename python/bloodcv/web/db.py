"""The laboratory records: SQLAlchemy tables and the engine, for SQLite (the default, a file under the data
folder) or PostgreSQL (postgresql://...). Every query goes through the ORM with bound parameters."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (Boolean, Column, Date, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event)
from sqlalchemy.orm import declarative_base, relationship, sessionmaker

Base = declarative_base()

ROLES = ("technician", "reviewer", "administrator")
STATUSES = ("queued", "running", "done", "failed")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # stored as naive UTC in every database


class User(Base):
    __tablename__ = "users"
    id = Column(Integer, primary_key=True)
    username = Column(String(64), unique=True, nullable=False)
    password_hash = Column(String(256), nullable=False)
    role = Column(String(16), nullable=False)
    created_at = Column(DateTime, default=now, nullable=False)


class LoginSession(Base):
    """A login: the cookie holds a random token, the table only its SHA-256."""
    __tablename__ = "login_sessions"
    id = Column(Integer, primary_key=True)
    token_hash = Column(String(64), unique=True, nullable=False)
    csrf_token = Column(String(64), nullable=False)
    user_id = Column(Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    expires_at = Column(DateTime, nullable=False)
    user = relationship(User)


class Patient(Base):
    """A pseudonymous code only: no name is ever stored."""
    __tablename__ = "patients"
    id = Column(Integer, primary_key=True)
    code = Column(String(64), unique=True, nullable=False)
    created_at = Column(DateTime, default=now, nullable=False)
    samples = relationship("Sample", back_populates="patient", order_by="Sample.collected_on")


class Sample(Base):
    __tablename__ = "samples"
    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id"), nullable=False)
    name = Column(String(128), nullable=False)
    collected_on = Column(Date, nullable=True)
    stain = Column(String(64), default="", nullable=False)
    laboratory = Column(String(128), default="", nullable=False)
    notes = Column(Text, default="", nullable=False)
    created_by = Column(Integer, ForeignKey("users.id"), nullable=False)
    created_at = Column(DateTime, default=now, nullable=False)
    patient = relationship(Patient, back_populates="samples")
    images = relationship("Image", back_populates="sample", order_by="Image.id")


class Image(Base):
    """An uploaded image, stored under the data folder by its SHA-256; the analysis job's state lives here."""
    __tablename__ = "images"
    id = Column(Integer, primary_key=True)
    sample_id = Column(Integer, ForeignKey("samples.id"), nullable=False)
    sha256 = Column(String(64), nullable=False)
    stored_name = Column(String(80), nullable=False)  # <sha256>.<extension>, made by the server
    filename = Column(String(255), default="", nullable=False)  # the uploader's name for it, shown only
    width = Column(Integer, nullable=False)
    height = Column(Integer, nullable=False)
    status = Column(String(16), default="queued", nullable=False)
    error = Column(Text, default="", nullable=False)
    uploaded_by = Column(Integer, ForeignKey("users.id"), nullable=False)
    uploaded_at = Column(DateTime, default=now, nullable=False)
    analysed_at = Column(DateTime, nullable=True)
    reviewed = Column(Boolean, default=False, nullable=False)
    sample = relationship(Sample, back_populates="images")
    cells = relationship("Cell", back_populates="image", order_by="Cell.id")


class Cell(Base):
    """A cell of an image: the pipeline's (origin "model") or drawn by a person (origin "user")."""
    __tablename__ = "cells"
    id = Column(Integer, primary_key=True)
    image_id = Column(Integer, ForeignKey("images.id"), nullable=False, index=True)
    x1 = Column(Float, nullable=False)
    y1 = Column(Float, nullable=False)
    x2 = Column(Float, nullable=False)
    y2 = Column(Float, nullable=False)
    label = Column(String(64), nullable=False)       # the detector's label
    score = Column(Float, nullable=False)            # the detector's score (1 for a drawn cell)
    type = Column(String(64), nullable=True)         # the classifier's type, "uncertain", or None (not typed)
    type_score = Column(Float, nullable=True)
    probabilities = Column(Text, default="{}", nullable=False)  # JSON {type: probability}
    entropy = Column(Float, nullable=True)
    origin = Column(String(8), default="model", nullable=False)
    deleted = Column(Boolean, default=False, nullable=False)
    reviewed = Column(Boolean, default=False, nullable=False)
    image = relationship(Image, back_populates="cells")


class Correction(Base):
    """The audit trail: who changed which cell, when, from what to what."""
    __tablename__ = "corrections"
    id = Column(Integer, primary_key=True)
    cell_id = Column(Integer, ForeignKey("cells.id"), nullable=False, index=True)
    user_id = Column(Integer, ForeignKey("users.id"), nullable=False)
    at = Column(DateTime, default=now, nullable=False)
    action = Column(String(16), nullable=False)  # type, delete, restore, add, box, review, import
    before = Column(Text, default="", nullable=False)
    after = Column(Text, default="", nullable=False)
    user = relationship(User)


def make_engine(url: str):
    """An engine for url; SQLite gets foreign keys on and may be used from the analysis worker's thread."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, future=True)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, future=True)
    Base.metadata.create_all(engine)
    return engine


def make_sessionmaker(engine):
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)
