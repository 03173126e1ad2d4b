"""How the demo's handlers fail: expected errors (``LipsyncError``) reach the page as one sentence
(``gr.Error``) with server paths replaced by file names; anything else as a one-sentence
"unexpected" message, with the traceback only in the server log."""
from __future__ import annotations

import functools
import inspect
import logging
import re

import gradio as gr

from lipsync.common import LipsyncError

from . import jobs
from .config import DemoConfig

log = logging.getLogger("demo")


def _clean(message: str, cfg: DemoConfig) -> str:
    """Server paths in a message -> the file's name (the visitor never sees the folder layout)."""
    return re.sub(re.escape(str(cfg.root)) + r"/[^\s,;:()']*/([^/\s,;:()']+)", r"\1", message)


def _as_gr_error(err: Exception, cfg: DemoConfig) -> gr.Error:
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, LipsyncError):
        return gr.Error(_clean(str(err), cfg), duration=None, print_exception=False)
    log.exception("unexpected failure in a demo handler")
    return gr.Error(_clean(f"Something went wrong unexpectedly ({type(err).__name__}: {err}); the server log has the details.", cfg),
                    duration=None, print_exception=False)


def _session(cfg: DemoConfig, session):
    """The session dict, or a new session when the page sent none (an event that beat the page load)."""
    if isinstance(session, dict) and jobs.TOKEN_RE.match(str(session.get("token", ""))):
        return session
    if session is None or isinstance(session, dict):
        return jobs.new_session(cfg)
    return session  # start() gets the stored token here, not a session


def user_errors(fn):
    """Turn ``LipsyncError`` (and anything unexpected) into a one-sentence ``gr.Error``; every
    handler takes (cfg, session, ...) and gets a valid session."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(cfg, session, *args, **kwargs):
            try:
                yield from fn(cfg, _session(cfg, session), *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - shown as one sentence
                raise _as_gr_error(err, cfg) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(cfg, session, *args, **kwargs):
        try:
            return fn(cfg, _session(cfg, session), *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - shown as one sentence
            raise _as_gr_error(err, cfg) from None
    return wrapper
