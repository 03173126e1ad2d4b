"""The rater app and the admin pages: a small FastAPI service over the study database.

Raters are known only by an unguessable token in their personal link (``/r/TOKEN``); every
rater endpoint is scoped by it, so nobody can read or answer another rater's trials. Trials are
sent without method names and media is served by ``/media/TOKEN/TRIAL/SLOT``, never by a path,
so neither a URL nor a file name tells which method is on which side, and nothing outside the
study's own files can be reached. Admin endpoints need the admin secret (``Authorization:
Bearer SECRET`` or the cookie set by logging in at ``/admin``), which never appears in a URL.

A rating is committed in its own transaction before the answer is sent; the page moves on only
after that answer. Submissions carry a client-made ``submit_id`` and the database allows one
rating per trial, so a double click or a retried request never creates two ratings.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import random
import re
import secrets
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import __version__
from .assign import Tally, TrialSpec, assign_trials, question_text
from .db import Rater, Rating, Trial, ratings_frame, study_row_id, utcnow
from .study import MOS_LABELS, MOS_SCALE, Study

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
MAX_BODY_BYTES = 16 * 1024
ADMIN_COOKIE = "hs_admin"
APP_VERSION = f"human_study {__version__}"


class RateIn(BaseModel):
    """One answer as the rater page sends it."""

    model_config = ConfigDict(extra="forbid")
    trial_id: int = Field(ge=1, le=2**31 - 1)
    choice: str = Field(max_length=10)
    submit_id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    response_ms: int = Field(ge=0, le=24 * 3600 * 1000)
    plays: int = Field(default=0, ge=0, le=1000)


class InviteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=1, ge=1, le=500)
    label: str | None = Field(default=None, max_length=100)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    return await _plain(send, 413, "request body too large")
        # Read the (small) body first, so an oversized stream is refused before any handler runs.
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _plain(send, 413, "request body too large")
            more = msg.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _plain(send, status: int, text: str):
    body = json.dumps({"detail": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _choices(trial: Trial, study: Study) -> list[str]:
    if trial.kind == "mos":
        return [str(v) for v in MOS_SCALE]
    nopref = True if trial.is_attention else study.question(trial.question_id).no_preference
    return ["left", "right"] + (["none"] if nopref else [])


def build_app(study: Study, engine: Engine, admin_secret: str, *, seed: int | None = None) -> FastAPI:
    """The FastAPI app for one study on one database (see the module docstring)."""
    if len(admin_secret) < 16:
        raise ValueError("the admin secret must have at least 16 characters")
    app = FastAPI(title=study.title, docs_url=None, redoc_url=None, openapi_url=None)
    sqlite = engine.dialect.name == "sqlite"
    # SQLite has one writer at a time: serialise our own writers instead of letting them spin on
    # SQLITE_BUSY. PostgreSQL takes concurrent writers; its unique constraints keep them honest.
    write_lock = threading.Lock() if sqlite else contextlib.nullcontext()
    join_lock = threading.Lock()  # one assignment at a time, so the balance counts are exact
    rng = random.Random(study.seed if seed is None else seed)
    rng_lock = threading.Lock()
    study_id = study_row_id(engine)
    cookie_value = hmac.new(admin_secret.encode(), b"admin-session", hashlib.sha256).hexdigest()

    # ----- helpers -------------------------------------------------------------------------
    def rater_or_404(s: Session, token: str) -> Rater:
        if not TOKEN_RE.match(token):
            raise HTTPException(404, "unknown link")
        rater = s.scalar(select(Rater).where(Rater.token == token))
        if rater is None:
            raise HTTPException(404, "unknown link; ask the study's organiser for a new one")
        return rater

    def next_trial(s: Session, rater: Rater) -> Trial | None:
        return s.scalar(select(Trial).outerjoin(Rating, Rating.trial_id == Trial.id)
                        .where(Trial.rater_id == rater.id, Rating.id.is_(None))
                        .order_by(Trial.position).limit(1))

    def state(s: Session, rater: Rater) -> dict:
        rows = s.execute(select(Trial.is_practice, func.count(Trial.id), func.count(Rating.id))
                         .outerjoin(Rating, Rating.trial_id == Trial.id)
                         .where(Trial.rater_id == rater.id).group_by(Trial.is_practice)).all()
        counts = {bool(p): (n, done) for p, n, done in rows}
        p_total, p_done = counts.get(True, (0, 0))
        total, done = counts.get(False, (0, 0))
        t = next_trial(s, rater)
        out = {"title": study.title, "instructions": study.instructions,
               "progress": {"done": done, "total": total, "practice_done": p_done, "practice_total": p_total},
               "phase": "done" if t is None else ("practice" if t.is_practice else "main"), "trial": None}
        if t is not None:
            n_media = 1 if t.kind == "mos" else 2
            out["trial"] = {
                "id": t.id, "kind": t.kind, "practice": bool(t.is_practice),
                "text": question_text(study, t.question_id), "choices": _choices(t, study),
                "media": [f"/media/{rater.token}/{t.id}/{k}" for k in range(n_media)],
                "scale_labels": list(MOS_LABELS) if t.kind == "mos" else None,
            }
        return out

    def mark_shown(token: str, trial_id: int) -> None:
        with write_lock, Session(engine) as s:
            t = s.get(Trial, trial_id)
            if t is not None and t.first_shown_at is None:
                t.first_shown_at = utcnow()
                s.commit()

    def create_rater(label: str | None, user_agent: str | None) -> str:
        with join_lock:
            with Session(engine) as s:
                n = s.scalar(select(func.count(Rater.id)))
                if n >= study.max_raters:
                    raise HTTPException(403, "this study has all the raters it needs; thank you")
                tally = Tally()
                q = select(Trial).where(Trial.is_practice.is_(False), Trial.is_attention.is_(False))
                for t in s.scalars(q):
                    tally.add(TrialSpec(t.position, t.kind, t.question_id, t.axis, t.clip_id, t.method_left,
                                        t.method_right, t.media_left, t.media_right))
            with rng_lock:
                rater_rng = random.Random(rng.getrandbits(64))
            specs = assign_trials(study, tally, rater_rng)
            token = secrets.token_urlsafe(24)
            with write_lock, Session(engine) as s:
                rater = Rater(study_id=study_id, token=token, label=label,
                              user_agent=(user_agent or "")[:300] or None)
                s.add(rater)
                s.flush()
                for sp in specs:
                    s.add(Trial(rater_id=rater.id, position=sp.position, kind=sp.kind, question_id=sp.question_id,
                                axis=sp.axis, clip_id=sp.clip_id, method_left=sp.method_left,
                                method_right=sp.method_right, media_left=sp.media_left, media_right=sp.media_right,
                                is_practice=sp.is_practice, is_attention=sp.is_attention, expected=sp.expected))
                s.commit()
            return token

    def require_admin(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), admin_secret.encode()):
            return
        cookie = request.cookies.get(ADMIN_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), cookie_value.encode()):
            return
        raise HTTPException(401, "the admin secret is required")

    # ----- errors: short JSON, never a traceback ---------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"},
                            status_code=400)

    @app.exception_handler(Exception)
    async def _crash(_request, err: Exception):  # pragma: no cover - a bug; keep other raters going
        import logging

        logging.getLogger("human_study").exception("request failed")
        return JSONResponse({"detail": "internal error; please retry"}, status_code=500)

    # ----- pages ---------------------------------------------------------------------------
    def page(name: str) -> HTMLResponse:
        return HTMLResponse((STATIC / name).read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page("index.html")

    @app.get("/r/{token}", response_class=HTMLResponse)
    def rater_page(token: str):
        with Session(engine) as s:
            rater_or_404(s, token)
        return page("rater.html")

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page():
        return page("admin.html")

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "version": APP_VERSION}

    # ----- rater API -------------------------------------------------------------------------
    @app.get("/api/study")
    def study_info():
        return {"title": study.title, "open_enrollment": study.open_enrollment}

    @app.post("/api/join")
    def join(request: Request):
        if not study.open_enrollment:
            raise HTTPException(403, "this study is by invitation only; use your personal link")
        token = create_rater(None, request.headers.get("user-agent"))
        return {"token": token, "url": f"/r/{token}"}

    @app.get("/api/r/{token}/state")
    def get_state(token: str):
        with Session(engine) as s:
            rater = rater_or_404(s, token)
            out = state(s, rater)
        if out["trial"] is not None:
            mark_shown(token, out["trial"]["id"])
        return JSONResponse(out, headers={"Cache-Control": "no-store"})

    @app.post("/api/r/{token}/rate")
    def rate(token: str, body: RateIn):
        with write_lock:
            with Session(engine) as s:
                rater = rater_or_404(s, token)
                trial = s.get(Trial, body.trial_id)
                if trial is None or trial.rater_id != rater.id:
                    raise HTTPException(404, "no such trial for this link")
                existing = s.scalar(select(Rating).where(Rating.trial_id == trial.id))
                if existing is not None:
                    return _duplicate(s, rater, existing, body)
                nxt = next_trial(s, rater)
                if nxt is None or nxt.id != trial.id:
                    raise HTTPException(409, "this is not the current trial; reload the page")
                if body.choice not in _choices(trial, study):
                    raise HTTPException(400, f"choice must be one of {', '.join(_choices(trial, study))}")
                chosen = None
                if trial.kind == "paired" and body.choice in ("left", "right"):
                    chosen = trial.method_left if body.choice == "left" else trial.method_right
                rating = Rating(trial_id=trial.id, rater_id=rater.id, submit_id=body.submit_id, choice=body.choice,
                                chosen_method=chosen, score=int(body.choice) if trial.kind == "mos" else None,
                                response_ms=body.response_ms, plays=body.plays, app_version=APP_VERSION)
                s.add(rating)
                if nxt.position == s.scalar(select(func.max(Trial.position)).where(Trial.rater_id == rater.id)):
                    rater.finished_at = utcnow()
                try:
                    s.commit()
                except IntegrityError:  # a concurrent duplicate won the race (PostgreSQL)
                    s.rollback()
                    existing = s.scalar(select(Rating).where(Rating.trial_id == trial.id))
                    if existing is None:
                        raise
                    return _duplicate(s, rater, existing, body)
                return {"ok": True, "rating_id": rating.id, "duplicate": False, "state": state(s, rater)}

    def _duplicate(s: Session, rater: Rater, existing: Rating, body: RateIn):
        if existing.submit_id == body.submit_id or existing.choice == body.choice:
            return {"ok": True, "rating_id": existing.id, "duplicate": True, "state": state(s, rater)}
        raise HTTPException(409, "this trial is already answered")

    @app.get("/media/{token}/{trial_id}/{slot}")
    def media(token: str, trial_id: int, slot: int):
        with Session(engine) as s:
            rater = rater_or_404(s, token)
            trial = s.get(Trial, trial_id)
            if trial is None or trial.rater_id != rater.id or slot not in (0, 1):
                raise HTTPException(404, "no such video")
            rel = trial.media_left if slot == 0 else trial.media_right
        if rel is None:
            raise HTTPException(404, "no such video")
        try:
            path = study.media_path(rel)  # refuses anything outside the study folder
        except Exception:
            raise HTTPException(404, "no such video") from None
        if not path.is_file():
            raise HTTPException(404, "no such video")
        return FileResponse(path, media_type="video/mp4",
                            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    # ----- admin -----------------------------------------------------------------------------
    @app.post("/admin/login")
    async def admin_login(request: Request):
        ctype = request.headers.get("content-type", "")
        try:
            if ctype.startswith("application/json"):
                secret = str((await request.json()).get("secret", ""))
            else:
                secret = str((await request.form()).get("secret", ""))
        except Exception:
            raise HTTPException(400, "send the secret as JSON {\"secret\": ...} or a form field") from None
        if not hmac.compare_digest(secret.encode(), admin_secret.encode()):
            time.sleep(0.5)  # slow down guessing
            raise HTTPException(401, "wrong admin secret")
        resp = JSONResponse({"ok": True})
        resp.set_cookie(ADMIN_COOKIE, cookie_value, httponly=True, samesite="strict", path="/admin")
        return resp

    @app.post("/admin/logout")
    def admin_logout():
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(ADMIN_COOKIE, path="/admin")
        return resp

    @app.get("/admin/api/progress")
    def admin_progress(request: Request):
        require_admin(request)
        return progress(engine, study)

    @app.post("/admin/api/invites")
    def admin_invites(request: Request, body: InviteIn):
        require_admin(request)
        tokens = [create_rater(body.label, None) for _ in range(body.count)]
        base = str(request.base_url).rstrip("/")
        return {"links": [f"{base}/r/{t}" for t in tokens]}

    @app.get("/admin/export.csv")
    def export_csv(request: Request):
        require_admin(request)
        return Response(ratings_frame(engine).to_csv(index=False), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="ratings.csv"', "Cache-Control": "no-store"})

    @app.get("/admin/export.parquet")
    def export_parquet(request: Request):
        require_admin(request)
        buf = io.BytesIO()
        ratings_frame(engine).to_parquet(buf, index=False)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": 'attachment; filename="ratings.parquet"',
                                 "Cache-Control": "no-store"})

    @app.get("/admin/analysis.zip")
    def analysis_zip(request: Request, exclude_flagged: bool = False):
        require_admin(request)
        from .analysis import analyze_ratings

        df = ratings_frame(engine)
        scored = df[~df["is_practice"] & ~df["is_attention"]]
        if scored.empty:
            raise HTTPException(409, "there are no ratings to analyse yet")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "analysis"
            analyze_ratings(df, out, exclude_flagged=exclude_flagged)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted(out.rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(out))
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="analysis.zip"', "Cache-Control": "no-store"})

    app.add_middleware(BodyLimit)
    return app


def progress(engine: Engine, study: Study) -> dict:
    """Live progress: raters, ratings per method pair and question, attention failures."""
    with Session(engine) as s:
        n_raters = s.scalar(select(func.count(Rater.id)))
        n_finished = s.scalar(select(func.count(Rater.id)).where(Rater.finished_at.is_not(None)))
        rows = s.execute(select(Trial.question_id, Trial.kind, Trial.method_left, Trial.method_right,
                                func.count(Trial.id), func.count(Rating.id))
                         .outerjoin(Rating, Rating.trial_id == Trial.id)
                         .where(Trial.is_practice.is_(False), Trial.is_attention.is_(False))
                         .group_by(Trial.question_id, Trial.kind, Trial.method_left, Trial.method_right)).all()
        att = s.execute(select(Trial.rater_id, Trial.expected, Rating.choice)
                        .join(Rating, Rating.trial_id == Trial.id).where(Trial.is_attention.is_(True))).all()
        n_ratings = s.scalar(select(func.count(Rating.id)))
    pairs: dict = {}
    for qid, kind, ml, mr, assigned, rated in rows:
        key = (qid, " vs ".join(sorted((ml, mr))) if kind == "paired" else ml)
        a, r = pairs.get(key, (0, 0))
        pairs[key] = (a + assigned, r + rated)
    failed = {}
    for rater_id, expected, choice in att:
        failed.setdefault(rater_id, [0, 0])
        failed[rater_id][0] += 1
        failed[rater_id][1] += int(choice != expected)
    return {
        "title": study.title, "raters": n_raters, "finished": n_finished, "ratings": n_ratings,
        "per_question": [{"question_id": q, "methods": m, "assigned": a, "rated": r}
                         for (q, m), (a, r) in sorted(pairs.items())],
        "attention": {"checked_raters": len(failed), "flagged_raters": sum(1 for v in failed.values() if v[1] > 0),
                      "failures": sum(v[1] for v in failed.values())},
    }
