"""Protections of the rating server that are not about one endpoint: rate limits, the admin login
throttle, admin sessions and the security headers of every response.

None of these ever sleeps on the event loop or in a worker: a refused request is answered at once
(429 with ``Retry-After``), so a flood of bad logins or joins cannot slow down raters.

- ``RateLimiter``: token buckets per client address, or one for everybody (open-link joins).
- ``LoginGuard``: wrong admin secrets lock out the client that sent them (doubling lockouts
  after ``LOGIN_FAILURES`` misses) and, past a global budget of misses, every secret check for a
  short while; requests that are not secret checks are never affected.
- ``AdminSessions``: a random session id per login (never derived from the secret), kept only as
  a hash, expiring after ``ADMIN_SESSION_S``, revoked on logout.
- ``SecurityHeaders``: ASGI middleware adding a strict Content-Security-Policy (scripts and styles
  from the server's own files only, nothing framed, nothing sent elsewhere), ``X-Frame-Options``,
  ``nosniff`` and ``Referrer-Policy`` to every response.
"""
from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

LOGIN_FAILURES = 5            # wrong secrets from one client within LOGIN_WINDOW_S before it is locked out
LOGIN_WINDOW_S = 15 * 60
LOGIN_LOCKOUT_S = 60          # the first lockout; each further one doubles, up to LOGIN_LOCKOUT_MAX_S
LOGIN_LOCKOUT_MAX_S = 60 * 60
GLOBAL_FAILURES = 100         # wrong secrets from everybody within LOGIN_WINDOW_S before all secret checks pause
GLOBAL_LOCKOUT_S = 60
ADMIN_SESSION_S = 12 * 3600   # an admin login lasts this long
MAX_ADMIN_SESSIONS = 100      # the oldest login is dropped beyond this
MAX_TRACKED_CLIENTS = 10_000  # memory bound of the per-client tables

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class Refused(Exception):
    """A request refused by a limit; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets, one per key: ``limit`` requests per ``per_s`` seconds (bursts up to ``limit``),
    refilled continuously. ``limit`` 0 disables it. ``what`` names the requests in the refusal."""

    def __init__(self, limit: float, per_s: float, *, what: str = "requests from your address",
                 clock=time.monotonic):
        self.limit, self.per_s, self.what, self.clock = limit, per_s, what, clock
        self.lock = threading.Lock()
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, key: str = "") -> None:
        """Count one request of ``key`` (a client address; "" for everybody); raises ``Refused`` over the limit."""
        if not self.limit:
            return
        now = self.clock()
        with self.lock:
            bucket = self.buckets.pop(key, None) or _Bucket(self.limit, now)
            self.buckets[key] = bucket  # most recent last; the oldest are dropped beyond the bound
            while len(self.buckets) > MAX_TRACKED_CLIENTS:
                self.buckets.popitem(last=False)
            rate = self.limit / self.per_s
            bucket.tokens = min(self.limit, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = (1 - bucket.tokens) / rate
        raise Refused(f"too many {self.what}; try again in {math.ceil(wait)} s", wait)


class LoginGuard:
    """Counts wrong secrets per client and overall, and says who may try again when."""

    def __init__(self, *, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.failures: OrderedDict[str, deque] = OrderedDict()
        self.locked_until: dict[str, float] = {}
        self.lockouts: dict[str, int] = {}
        self.all_failures: deque = deque()
        self.global_until = 0.0

    def check(self, client: str) -> None:
        """Raises ``Refused`` while ``client`` (or everybody) is locked out; call before comparing a secret."""
        now = self.clock()
        with self.lock:
            until = self.locked_until.get(client, 0.0)
            if until > now:
                raise Refused(f"too many wrong admin secrets from your address; try again in {math.ceil(until - now)} s",
                              until - now)
            if self.global_until > now:
                raise Refused("too many wrong admin secrets were sent to this server; try again in "
                              f"{math.ceil(self.global_until - now)} s", self.global_until - now)

    def failed(self, client: str) -> None:
        now = self.clock()
        with self.lock:
            recent = self.failures.pop(client, None) or deque()
            self.failures[client] = recent
            while len(self.failures) > MAX_TRACKED_CLIENTS:
                old, _ = self.failures.popitem(last=False)
                self.locked_until.pop(old, None)
                self.lockouts.pop(old, None)
            recent.append(now)
            while recent and recent[0] < now - LOGIN_WINDOW_S:
                recent.popleft()
            if len(recent) >= LOGIN_FAILURES:
                n = self.lockouts.get(client, 0)
                self.lockouts[client] = n + 1
                self.locked_until[client] = now + min(LOGIN_LOCKOUT_S * 2 ** n, LOGIN_LOCKOUT_MAX_S)
                recent.clear()
            self.all_failures.append(now)
            while self.all_failures and self.all_failures[0] < now - LOGIN_WINDOW_S:
                self.all_failures.popleft()
            if len(self.all_failures) >= GLOBAL_FAILURES:
                self.global_until = now + GLOBAL_LOCKOUT_S
                self.all_failures.clear()

    def succeeded(self, client: str) -> None:
        with self.lock:
            self.failures.pop(client, None)
            self.lockouts.pop(client, None)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class AdminSessions:
    """Admin logins: ``create()`` returns a new random id for the cookie; only its hash is kept."""

    def __init__(self, lifetime_s: float = ADMIN_SESSION_S, *, clock=time.monotonic):
        self.lifetime_s, self.clock = lifetime_s, clock
        self.lock = threading.Lock()
        self.expires: OrderedDict[str, float] = OrderedDict()

    def create(self) -> str:
        session_id = secrets.token_urlsafe(32)
        with self.lock:
            self.expires[_digest(session_id)] = self.clock() + self.lifetime_s
            while len(self.expires) > MAX_ADMIN_SESSIONS:
                self.expires.popitem(last=False)
        return session_id

    def valid(self, session_id: str | None) -> bool:
        if not session_id or len(session_id) > 100:
            return False
        key = _digest(session_id)
        with self.lock:
            until = self.expires.get(key)
            if until is None:
                return False
            if until <= self.clock():
                del self.expires[key]
                return False
            return True

    def revoke(self, session_id: str | None) -> None:
        if session_id:
            with self.lock:
                self.expires.pop(_digest(session_id), None)


class SecurityHeaders:
    """ASGI middleware: the security headers of the module docstring on every HTTP response."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self.HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)
