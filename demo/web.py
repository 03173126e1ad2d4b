"""The demo's HTTP hardening: one ASGI middleware around Gradio's app (``launch_kwargs`` installs it).

1. **Session cookie.** A visitor's session is a random 128-bit token in an ``HttpOnly``,
   ``SameSite=Lax`` cookie (``Secure`` with ``--secure-cookies``), issued with the page. Page
   scripts cannot read it, so even a script that got into the page could not carry the session
   away; the session folder is named by a hash of the token, so file links do not show it either.
2. **Files are served as media or as downloads, never as pages.** Gradio serves every file under
   ``allowed_paths`` inline with the type its name suggests. Here a file response keeps its type
   only when it is one of the media types the demo makes (video, audio, PNG/JPEG/WebP/GIF, glTF
   binary); anything else (HTML, SVG, XML, JSON, text...) goes out as ``application/octet-stream``
   with ``Content-Disposition: attachment``. Every file response also carries
   ``X-Content-Type-Options: nosniff`` and a sandboxing Content-Security-Policy, so a file opened on
   its own can run no script in the demo's origin.
3. **Headers on every response:** a Content-Security-Policy (scripts, connections, media and frames
   from the demo's own origin only; no plugins; the page cannot be framed by another site),
   ``X-Frame-Options: DENY``, ``nosniff`` and ``Referrer-Policy: same-origin``. Gradio's page
   starts with a few inline scripts (its config among them); the policy of that page lists their
   SHA-256 hashes, computed from the page as it is sent, so those run and no other inline script
   or event-handler attribute can.
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from http.cookies import CookieError, SimpleCookie

SESSION_COOKIE = "lipsync_session"
TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")

# What Gradio's page needs: its own scripts (and its inline start-up scripts, by hash: see
# ``page_csp``; its HTML component compiles its template with ``Function``, hence 'unsafe-eval'),
# inline styles, images, media and fonts from this origin or data:/blob: URLs, and connections back
# to this origin. No other inline script or event-handler attribute runs, and nothing may be loaded
# from, sent to or framed by another site.
SCRIPT_SRC = "script-src 'self' 'unsafe-eval'"
PAGE_CSP = "; ".join([
    "default-src 'self'",
    SCRIPT_SRC,
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self' data: blob:",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# A file opened on its own is a sandboxed document without scripts, whatever its type.
FILE_CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
INLINE_TYPES = ("video/", "audio/", "image/png", "image/jpeg", "image/webp", "image/gif", "model/gltf-binary",
                "application/octet-stream")
FILE_ROUTE = re.compile(r"(^|/)(gradio_api/)?file=")
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)


def page_csp(html: bytes) -> str:
    """``PAGE_CSP`` that also lets exactly the inline scripts of ``html`` run (by their SHA-256)."""
    hashes = sorted({"'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
                     for m in INLINE_SCRIPT.finditer(html)})
    return PAGE_CSP.replace(SCRIPT_SRC, " ".join([SCRIPT_SRC, *hashes]), 1)


def _is_file_route(path: str) -> bool:
    return bool(FILE_ROUTE.search(path))


def request_cookie(headers, name: str = SESSION_COOKIE) -> str | None:
    """The value of cookie ``name`` in ASGI headers (a list of byte pairs) or a mapping; None when absent."""
    items = headers.items() if hasattr(headers, "items") else headers
    for key, value in items:
        key = key.decode("latin-1") if isinstance(key, bytes) else key
        if key.lower() != "cookie":
            continue
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        try:
            jar = SimpleCookie(value)
        except CookieError:
            continue
        if name in jar:
            return jar[name].value
    return None


def session_token(headers) -> str | None:
    """The visitor's session token from the request headers, when it is well formed."""
    token = request_cookie(headers)
    return token if token and TOKEN_RE.match(token) else None


def session_cookie_header(token: str, *, secure: bool, max_age_s: int) -> str:
    parts = [f"{SESSION_COOKIE}={token}", "Path=/", f"Max-Age={max_age_s}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class DemoSecurity:
    """ASGI middleware: the session cookie, safe file responses and security headers (module docstring).

    ``secure_cookies``: mark the cookie ``Secure`` (serve the demo over HTTPS, e.g. behind a
    reverse proxy, when you set it); ``session_days``: the cookie's lifetime.
    """

    def __init__(self, app, *, secure_cookies: bool = False, session_days: float = 30):
        self.app = app
        self.secure_cookies = secure_cookies
        self.max_age_s = int(session_days * 86400)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        is_file = _is_file_route(path)
        new_token = None
        if scope.get("method") == "GET" and path in ("", "/") and session_token(scope.get("headers", [])) is None:
            new_token = secrets.token_hex(16)  # the page's own requests (its load event first) carry it
        secure = self.secure_cookies or scope.get("scheme") == "https"
        held: dict | None = None  # an HTML page's response start, sent once its body is complete
        body: list[bytes] = []

        def finish_start(message, csp: str) -> dict:
            headers = [(k, v) for k, v in message.get("headers", [])
                       if k.lower() not in (b"x-frame-options", b"x-content-type-options", b"referrer-policy",
                                            b"content-security-policy")]
            if is_file:
                headers = _safe_file_headers(headers)
            headers += [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
                        (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
            if new_token is not None:
                headers.append((b"set-cookie", session_cookie_header(new_token, secure=secure,
                                                                      max_age_s=self.max_age_s).encode()))
            return {**message, "headers": headers}

        async def send_with_headers(message):
            nonlocal held
            if message["type"] == "http.response.start":
                ctype = next((v for k, v in message.get("headers", []) if k.lower() == b"content-type"), b"")
                if not is_file and ctype.startswith(b"text/html"):
                    held = message  # its policy depends on the page's inline scripts
                    return
                return await send(finish_start(message, FILE_CSP if is_file else PAGE_CSP))
            if held is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                page = b"".join(body)
                await send(finish_start(held, page_csp(page)))
                held = None
                return await send({"type": "http.response.body", "body": page, "more_body": False})
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _safe_file_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Keep a file response's type when it is a media type the demo makes; else make it a download."""
    ctype = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
    if ctype.split(";")[0].strip().lower().startswith(INLINE_TYPES):
        return headers
    out = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-disposition")]
    disposition = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-disposition"), "")
    filename = re.search(r';\s*filename\*?=.*$', disposition)
    out += [(b"content-type", b"application/octet-stream"),
            (b"content-disposition", ("attachment" + (filename.group(0) if filename else "")).encode("latin-1"))]
    return out
