"""``python -m demo``: start the Gradio demo (``make demo`` does this).

    python -m demo [--host 127.0.0.1] [--port 7860] [--workdir .cache/demo] [--example-preset example]
                   [--secure-cookies]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from .config import EXAMPLE_PRESETS

    ap = argparse.ArgumentParser(prog="python -m demo", description="The lipsync Gradio demo.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860, help="port to listen on")
    ap.add_argument("--workdir", default=None,
                    help="folder for sessions and cached results (default: $LIPSYNC_DEMO_DIR or .cache/demo in the project)")
    ap.add_argument("--example-preset", choices=EXAMPLE_PRESETS, default=None,
                    help="training of the bundled example: 'example' (~2 min on 2 CPU cores), 'tiny' (seconds, a "
                         "smoke test) or 'quick' (5-7 min) (default: $LIPSYNC_DEMO_EXAMPLE_PRESET or example)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch device for training")
    ap.add_argument("--secure-cookies", action="store_true",
                    help="mark the session cookie Secure: set this when the demo is served over HTTPS (a reverse proxy)")
    return ap


def main(argv=None) -> int:
    from lipsync.common import setup_cache_env

    args = build_parser().parse_args(argv)
    setup_cache_env()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from . import jobs
    from .app import build_app, launch_kwargs
    from .config import default_config

    cfg = default_config(root=args.workdir, example_preset=args.example_preset, device=args.device,
                         secure_cookies=args.secure_cookies or None)
    (cfg.root / "browser_secret").unlink(missing_ok=True)  # left by versions that kept sessions in localStorage
    removed = jobs.prune_sessions(cfg)
    if removed:
        logging.getLogger("demo").info("removed %d session(s) unused for %d days", removed, jobs.SESSION_MAX_AGE_DAYS)
    app = build_app(cfg)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=args.host, server_port=args.port, **launch_kwargs(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
