"""Storage of raters, their trials and their ratings (SQLAlchemy; SQLite or PostgreSQL).

Durability: every rating is committed in its own transaction before the server answers, and
the answer is what lets the rater's page move on, so an acknowledged rating is on disk. SQLite
runs in WAL mode with ``synchronous=FULL``. Uniqueness is enforced by the database, not by the
application: one rating per trial (``UNIQUE(trial_id)``), one trial per position per rater.

The schema is created and upgraded by Alembic (``human_study/migrations``); ``open_database``
upgrades an existing database to the current revision, so a running study survives an upgrade
of this program.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import (Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event,
                        select)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .study import StudyError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    """The one study a database belongs to (``design_hash`` ties it to the study file)."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    design_hash: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Rater(Base):
    """A rater, known only by an unguessable token (their personal link)."""

    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # revision 0003: "open" (joined through the open link) or "invite" (an admin's personal link)
    enrolled_via: Mapped[str | None] = mapped_column(String(10), nullable=True)


class Trial(Base):
    """One trial of one rater, in presentation order; the methods are never sent to the rater."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("rater_id", "position", name="uq_trials_rater_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10))
    question_id: Mapped[str] = mapped_column(String(64))
    axis: Mapped[str] = mapped_column(String(20))
    clip_id: Mapped[str] = mapped_column(String(64))
    method_left: Mapped[str] = mapped_column(String(64))
    method_right: Mapped[str | None] = mapped_column(String(64), nullable=True)
    media_left: Mapped[str] = mapped_column(Text)
    media_right: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_practice: Mapped[bool] = mapped_column(Boolean, default=False)
    is_attention: Mapped[bool] = mapped_column(Boolean, default=False)
    expected: Mapped[str | None] = mapped_column(String(10), nullable=True)
    # revision 0002
    first_shown_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Rating(Base):
    """One answer; ``UNIQUE(trial_id)`` makes a retried or double submission harmless."""

    __tablename__ = "ratings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), unique=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    submit_id: Mapped[str] = mapped_column(String(64))
    choice: Mapped[str] = mapped_column(String(10))
    chosen_method: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    app_version: Mapped[str] = mapped_column(String(40))
    # revision 0002
    plays: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # revision 0003: milliseconds from the server first showing the trial to the answer reaching it
    viewed_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)


def default_db_url(study_file: str | Path) -> str:
    return f"sqlite:///{Path(study_file).resolve().parent / 'ratings.db'}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full fsync, foreign keys and a busy timeout."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StudyError("PostgreSQL needs its driver: pip install 'lipsync[postgres]'.") from None
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    if not url.startswith("sqlite"):
        raise StudyError(f"Unsupported database URL {url.split(':')[0]!r}; use sqlite:///FILE or postgresql://...")
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=20,
                           max_overflow=20)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` with Alembic, on ``engine``'s database."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_database(url: str, study=None, *, must_exist: bool = False) -> Engine:
    """Open (creating or upgrading) the database; with ``study``, register it or check it matches.

    ``must_exist``: refuse a SQLite file that is not there yet (for export and analysis).
    """
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise StudyError(f"The folder {path.parent} for the SQLite database does not exist.")
        if must_exist and not path.is_file():
            raise StudyError(f"There is no database at {path}; give the --db that serve used.")
        if not path.exists():
            # it holds the raters' personal tokens: readable by its owner only (SQLite gives its
            # -wal and -shm files the same mode)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    engine = make_engine(url)
    try:
        upgrade(engine)
    except OperationalError as err:
        engine.dispose()
        raise StudyError(f"Cannot open the database {engine.url.render_as_string(hide_password=True)}: "
                         f"{str(err.orig).strip().splitlines()[0]}.") from None
    if study is not None:
        with Session(engine) as s:
            rows = s.scalars(select(StudyRow)).all()
            if not rows:
                s.add(StudyRow(title=study.title, design_hash=study.design_hash()))
                s.commit()
            elif rows[0].design_hash != study.design_hash():
                engine.dispose()
                raise StudyError(f"This database holds ratings of another study design ({rows[0].title!r}); "
                                 "use a new --db for a changed study, so that no ratings are mixed up.")
    return engine


def study_row_id(engine: Engine) -> int:
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        return s.scalars(select(StudyRow.id)).one()


EXPORT_COLUMNS = ["rating_id", "rater_id", "rater_label", "trial_id", "position", "question_id", "question_type", "axis",
                  "clip_id", "method_left", "method_right", "method", "choice", "chosen_method", "score",
                  "is_practice", "is_attention", "attention_expected", "attention_passed", "response_ms", "plays",
                  "first_shown_at", "viewed_ms", "created_at", "app_version"]


def ratings_frame(engine: Engine):
    """Every rating joined with its trial, one row per rating (``EXPORT_COLUMNS``), as pandas."""
    import pandas as pd
    from sqlalchemy.orm import Session

    q = (select(Rating, Trial, Rater.label).join(Trial, Rating.trial_id == Trial.id)
         .join(Rater, Rating.rater_id == Rater.id).order_by(Rating.id))
    rows = []
    with Session(engine) as s:
        for r, t, label in s.execute(q):
            paired = t.kind == "paired"
            rows.append({
                "rating_id": r.id, "rater_id": r.rater_id, "rater_label": label, "trial_id": t.id,
                "position": t.position, "question_id": t.question_id, "question_type": t.kind, "axis": t.axis,
                "clip_id": t.clip_id, "method_left": t.method_left if paired else None,
                "method_right": t.method_right if paired else None, "method": None if paired else t.method_left,
                "choice": r.choice, "chosen_method": r.chosen_method, "score": r.score,
                "is_practice": bool(t.is_practice), "is_attention": bool(t.is_attention),
                "attention_expected": t.expected,
                "attention_passed": (r.choice == t.expected) if t.is_attention else None,
                "response_ms": r.response_ms, "plays": r.plays,
                "first_shown_at": t.first_shown_at.isoformat(timespec="milliseconds") + "Z" if t.first_shown_at else None,
                "viewed_ms": r.viewed_ms,
                "created_at": r.created_at.isoformat(timespec="milliseconds") + "Z", "app_version": r.app_version,
            })
    df = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    df["score"] = df["score"].astype("Int64")
    df["plays"] = df["plays"].astype("Int64")
    df["viewed_ms"] = df["viewed_ms"].astype("Int64")
    return df
