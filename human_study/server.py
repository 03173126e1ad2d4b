"""The rater app and the admin pages: a small FastAPI service over the study database.

Raters are known only by an unguessable token in their personal link (``/r/TOKEN``); every
rater endpoint is scoped by it, so nobody can read or answer another rater's trials. Trials are
sent without method names and media is served by ``/media/TOKEN/TRIAL/SLOT``, never by a path,
so neither a URL nor a file name tells which method is on which side, and nothing outside the
study's own files can be reached. Admin endpoints need the admin secret (``Authorization:
Bearer SECRET``) or the session cookie of a login at ``/admin``; the secret never appears in a URL.

Abuse (see ``human_study.security``): wrong admin secrets lock out their sender without slowing
anyone else; open enrollment is rate limited per address and overall and can require an
enrollment code; a rater who joined but answered nothing gives their place back after
``JOIN_HOLD_S``; an answer counts only after the video has been played (``plays``) and had time to
play (``Study.min_watch_fraction``, measured by the server). Pages load their scripts and styles
from ``/static`` so that a strict Content-Security-Policy can forbid inline scripts.

A rating is committed in its own transaction before the answer is sent; the page moves on only
after that answer. Submissions carry a client-made ``submit_id`` and the database allows one
rating per trial, so a double click or a retried request never creates two ratings.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import io
import json
import random
import re
import secrets
import tempfile
import threading
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
from .security import ADMIN_SESSION_S, AdminSessions, LoginGuard, RateLimiter, Refused, SecurityHeaders
from .study import MOS_LABELS, MOS_SCALE, Study

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
MAX_BODY_BYTES = 16 * 1024
ADMIN_COOKIE = "hs_admin"
APP_VERSION = f"human_study {__version__}"
STATIC_FILES = {"index.js": "text/javascript", "rater.js": "text/javascript", "admin.js": "text/javascript",
                "index.css": "text/css", "rater.css": "text/css", "admin.css": "text/css"}
JOIN_HOLD_S = 3600          # a rater who joined through the open link but answered nothing holds a place this long
JOINS_PER_CLIENT_HOUR = 20  # open-link joins from one address per hour (bursts allowed)
JOINS_PER_MINUTE = 120      # open-link joins from everybody per minute
MAX_CODE_CHARS = 200


class RateIn(BaseModel):
    """One answer as the rater page sends it."""

    model_config = ConfigDict(extra="forbid")
    trial_id: int = Field(ge=1, le=2**31 - 1)
    choice: str = Field(max_length=10)
    submit_id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    response_ms: int = Field(ge=0, le=24 * 3600 * 1000)
    plays: int = Field(default=0, ge=0, le=1000)


class JoinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(default=None, max_length=MAX_CODE_CHARS)


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
    return ["left", "right"] + (["none"] if study.question(trial.question_id).no_preference else [])


def _client(request: Request) -> str:
    """The client's address (the proxy's unless uvicorn is told to trust its X-Forwarded-For)."""
    return request.client.host if request.client else "unknown"


def media_seconds(path: Path) -> float:
    """A study video's duration (0 when ffprobe cannot tell)."""
    from lipsync.common import LipsyncError
    from lipsync.media import probe

    try:
        return max(0.0, probe(path).duration)
    except LipsyncError:
        return 0.0


def build_app(study: Study, engine: Engine, admin_secret: str, *, seed: int | None = None,
              public_url: str | None = None, secure_cookies: bool = False, enrollment_code: str | None = None,
              joins_per_client_hour: float = JOINS_PER_CLIENT_HOUR, joins_per_minute: float = JOINS_PER_MINUTE,
              admin_session_s: float = ADMIN_SESSION_S) -> FastAPI:
    """The FastAPI app for one study on one database (see the module docstring).

    Args:
        public_url: the address raters reach the server at (``https://study.example.org``); invite
            links start with it. Without it they are root-relative and the admin page completes
            them with its own address; they are never built from a request's ``Host`` header.
        secure_cookies: mark the admin cookie ``Secure`` (always so for requests that arrive over HTTPS).
        enrollment_code: when set, joining through the open link needs it (``/?code=...``).
        joins_per_client_hour, joins_per_minute: open-link join limits (0: none).
        admin_session_s: how long an admin login lasts.
    """
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
    guard = LoginGuard()
    sessions = AdminSessions(admin_session_s)
    client_joins = RateLimiter(joins_per_client_hour, 3600, what="joins from your address")
    all_joins = RateLimiter(joins_per_minute, 60, what="joins right now")
    durations: dict[str, float] = {}
    durations_lock = threading.Lock()

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

    def holding_places(s: Session):
        """The ids of raters who hold a place: invited, answered at least once, or joined within
        ``JOIN_HOLD_S`` (an open-link join nobody uses gives its place back)."""
        answered = select(Rating.rater_id).distinct()
        recent = utcnow() - dt.timedelta(seconds=JOIN_HOLD_S)
        invited = Rater.enrolled_via.is_(None) | (Rater.enrolled_via != "open")
        return select(Rater.id).where(invited | Rater.id.in_(answered) | (Rater.created_at >= recent))

    def study_full(s: Session) -> bool:
        return s.scalar(select(func.count()).select_from(holding_places(s).subquery())) >= study.max_raters

    def create_rater(label: str | None, user_agent: str | None, via: str) -> str:
        with join_lock:
            with Session(engine) as s:
                if study_full(s):
                    raise HTTPException(403, "this study has all the raters it needs; thank you")
                tally = Tally()
                q = select(Trial).where(Trial.is_practice.is_(False), Trial.is_attention.is_(False),
                                        Trial.rater_id.in_(holding_places(s)))
                for t in s.scalars(q):
                    tally.add(TrialSpec(t.position, t.kind, t.question_id, t.axis, t.clip_id, t.method_left,
                                        t.method_right, t.media_left, t.media_right))
            with rng_lock:
                rater_rng = random.Random(rng.getrandbits(64))
            specs = assign_trials(study, tally, rater_rng)
            token = secrets.token_urlsafe(24)
            with write_lock, Session(engine) as s:
                rater = Rater(study_id=study_id, token=token, label=label, enrolled_via=via,
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

    def secret_matches(request: Request, given: str) -> bool:
        """Compare ``given`` with the admin secret, counting misses (raises ``Refused`` when locked out)."""
        client = _client(request)
        guard.check(client)
        if hmac.compare_digest(given.encode(), admin_secret.encode()):
            guard.succeeded(client)
            return True
        guard.failed(client)
        return False

    def require_admin(request: Request) -> None:
        if sessions.valid(request.cookies.get(ADMIN_COOKIE)):
            return
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and secret_matches(request, auth[7:].strip()):
            return
        raise HTTPException(401, "the admin secret is required")

    def duration(rel: str) -> float:
        with durations_lock:
            known = durations.get(rel)
        if known is None:
            try:
                known = media_seconds(study.media_path(rel))
            except Exception:  # a path outside the study: the media route refuses it too
                known = 0.0
            with durations_lock:
                durations[rel] = known
        return known

    def min_view_s(trial: Trial) -> float:
        """Seconds a trial must have been shown before an answer counts (``Study.min_watch_fraction``)."""
        if study.min_watch_fraction <= 0:
            return 0.0
        return study.min_watch_fraction * max(duration(rel) for rel in (trial.media_left, trial.media_right) if rel)

    if study.min_watch_fraction > 0:  # learn every video's duration now, not while an answer holds the write lock
        every = {rel for c in study.clips for rel in c.videos.values()}
        every |= {rel for pair in study.attention.clips.values() for rel in pair.values()}
        threading.Thread(target=lambda: [duration(rel) for rel in sorted(every)], name="media-durations",
                         daemon=True).start()

    # ----- errors: short JSON, never a traceback ---------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"},
                            status_code=400)

    @app.exception_handler(Refused)
    async def _refused(_request, err: Refused):
        return JSONResponse({"detail": str(err)}, status_code=429, headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(Exception)
    async def _crash(_request, err: Exception):  # pragma: no cover - a bug; keep other raters going
        import logging

        logging.getLogger("human_study").exception("request failed")
        return JSONResponse({"detail": "internal error; please retry"}, status_code=500)

    # ----- pages ---------------------------------------------------------------------------
    def page(name: str) -> HTMLResponse:
        return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            raise HTTPException(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})

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
        with Session(engine) as s:
            full = study_full(s)
        return {"title": study.title, "open_enrollment": study.open_enrollment, "full": full,
                "needs_code": bool(enrollment_code)}

    @app.post("/api/join")
    async def join(request: Request):
        if not study.open_enrollment:
            raise HTTPException(403, "this study is by invitation only; use your personal link")
        client_joins.check(_client(request))  # before anything else: wrong codes count too
        all_joins.check()
        code = None
        if enrollment_code:
            try:
                raw = await request.body()
                code = JoinIn.model_validate_json(raw or b"{}").code if raw.strip() else None
            except ValueError:
                raise HTTPException(400, "send the enrollment code as JSON {\"code\": ...}") from None
            if not code or not hmac.compare_digest(code.encode(), enrollment_code.encode()):
                raise HTTPException(403, "this study needs the enrollment code from your invitation"
                                    if not code else "that enrollment code is not right; check your invitation")
        from starlette.concurrency import run_in_threadpool

        token = await run_in_threadpool(create_rater, None, request.headers.get("user-agent"), "open")
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
                if body.plays < 1:
                    raise HTTPException(400, "play the video to the end before answering")
                viewed_s = (utcnow() - trial.first_shown_at).total_seconds() if trial.first_shown_at else 0.0
                if viewed_s < min_view_s(trial):
                    raise HTTPException(409, "watch the video to the end before answering")
                chosen = None
                if trial.kind == "paired" and body.choice in ("left", "right"):
                    chosen = trial.method_left if body.choice == "left" else trial.method_right
                rating = Rating(trial_id=trial.id, rater_id=rater.id, submit_id=body.submit_id, choice=body.choice,
                                chosen_method=chosen, score=int(body.choice) if trial.kind == "mos" else None,
                                response_ms=body.response_ms, plays=body.plays, viewed_ms=int(viewed_s * 1000),
                                app_version=APP_VERSION)
                s.add(rating)
                following = s.scalar(select(Trial).where(Trial.rater_id == rater.id, Trial.position > nxt.position)
                                     .order_by(Trial.position).limit(1))
                if following is None:
                    rater.finished_at = utcnow()
                elif following.first_shown_at is None:
                    following.first_shown_at = utcnow()  # the reply shows it: its viewing time starts now
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
        if not secret_matches(request, secret):  # refuses at once while the sender is locked out
            raise HTTPException(401, "wrong admin secret")
        sessions.revoke(request.cookies.get(ADMIN_COOKIE))  # a new id for every login
        resp = JSONResponse({"ok": True})
        resp.set_cookie(ADMIN_COOKIE, sessions.create(), max_age=int(admin_session_s), httponly=True,
                        samesite="strict", path="/admin", secure=secure_cookies or request.url.scheme == "https")
        return resp

    @app.post("/admin/logout")
    def admin_logout(request: Request):
        sessions.revoke(request.cookies.get(ADMIN_COOKIE))
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(ADMIN_COOKIE, path="/admin", httponly=True, samesite="strict",
                           secure=secure_cookies or request.url.scheme == "https")
        return resp

    @app.get("/admin/api/progress")
    def admin_progress(request: Request):
        require_admin(request)
        return progress(engine, study)

    @app.post("/admin/api/invites")
    def admin_invites(request: Request, body: InviteIn):
        require_admin(request)
        tokens = [create_rater(body.label, None, "invite") for _ in range(body.count)]
        base = (public_url or "").rstrip("/")  # never the request's Host header
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
    app.add_middleware(SecurityHeaders)
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
