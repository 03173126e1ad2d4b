"""``python -m human_study create|serve|analyze|export|loadtest``: see each command's --help."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from lipsync.common import LipsyncError, setup_cache_env


def _read_code(path: str | None) -> str | None:
    """The enrollment code from ``--enrollment-code-file`` (None without the option)."""
    from .study import StudyError

    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"The enrollment code file {p} does not exist.")
    code = p.read_text(encoding="utf-8").strip()
    if not (4 <= len(code) <= 200) or any(c.isspace() for c in code):
        raise StudyError(f"The enrollment code in {p} must be 4-200 characters without spaces.")
    return code


def _read_secret(path: str | None, study_file: Path) -> tuple[str, Path]:
    from .study import StudyError

    if path:
        p = Path(path)
        if not p.is_file():
            raise StudyError(f"The admin secret file {p} does not exist.")
        secret = p.read_text(encoding="utf-8").strip()
        if len(secret) < 16 or any(c.isspace() for c in secret):
            raise StudyError(f"The admin secret in {p} must be at least 16 characters without spaces.")
        return secret, p
    p = study_file.resolve().parent / "admin_secret.txt"
    if p.is_file():
        return _read_secret(str(p), study_file)
    secret = secrets.token_urlsafe(24)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    except OSError as err:
        raise StudyError(f"Cannot write the admin secret to {p} ({err.strerror}); "
                         "give one with --admin-secret-file.") from None
    return secret, p


def cmd_create(args) -> None:
    from .create import create_study

    out = create_study(args.results, args.out, methods=args.methods, reference=args.reference, pairs=args.pairs,
                       questions=args.questions, trials_per_rater=args.trials_per_rater,
                       practice_trials=args.practice, attention=args.attention,
                       attention_shift_s=args.attention_shift, title=args.title, seed=args.seed,
                       min_watch_fraction=args.min_watch)
    from .study import load_study

    study = load_study(out)
    print(f"wrote {out}: {len(study.clips)} clips, methods {', '.join(study.methods)}, "
          f"{len(study.item_universe())} distinct trials, {study.trials_per_rater} per rater")
    print(f"serve it with: python -m human_study serve --study {out}")


def _check_port_free(host: str, port: int) -> None:
    import socket

    from .study import StudyError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise StudyError(f"The host {host!r} is not an address of this machine; use e.g. --host 127.0.0.1.") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as err:
            raise StudyError(f"Cannot listen on {host}:{port} ({err.strerror.lower() if err.strerror else err}); "
                             "pick another --port or stop what uses it.") from None


def cmd_serve(args) -> None:
    import uvicorn

    from .db import default_db_url, open_database
    from .server import build_app
    from .study import load_study

    study = load_study(args.study)
    _check_port_free(args.host, args.port)
    url = args.db or default_db_url(args.study)
    engine = open_database(url, study)
    secret, secret_file = _read_secret(args.admin_secret_file, Path(args.study))
    code = _read_code(args.enrollment_code_file)
    host = f"[{args.host}]" if ":" in args.host else args.host
    # invite links: --public-url, else completed by the admin page with the address it was opened at
    app = build_app(study, engine, secret, public_url=args.public_url, secure_cookies=args.secure_cookies,
                    enrollment_code=code, joins_per_client_hour=args.join_rate)
    public_url = (args.public_url or f"http://{host}:{args.port}").rstrip("/")
    print(f"study {study.title!r}: {len(study.item_universe())} distinct trials, {study.trials_per_rater} per rater")
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    if not study.open_enrollment:
        print(f"raters:   {public_url}/ (invitation only)")
    elif code:
        print(f"raters:   {public_url}/?code=<the code in {args.enrollment_code_file}>")
    else:
        print(f"raters:   {public_url}/")
    print(f"admin:    {public_url}/admin (the secret is in {secret_file})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=5, proxy_headers=True,
                forwarded_allow_ips=args.forwarded_allow_ips or "127.0.0.1")


def cmd_analyze(args) -> None:
    from .analysis import analyze_ratings
    from .db import open_database, ratings_frame

    engine = open_database(args.db, must_exist=True)
    df = ratings_frame(engine)
    try:
        summary = analyze_ratings(df, Path(args.out), exclude_flagged=args.exclude_flagged,
                                  max_attention_failures=args.max_attention_failures, seed=args.seed)
    except ValueError as err:  # no ratings yet, or an output path that is a file
        raise LipsyncError(str(err)) from None
    print(f"analysed {summary.get('n_ratings')} ratings of {summary.get('n_raters')} raters "
          f"({summary.get('n_flagged')} flagged{', excluded' if args.exclude_flagged else ', kept'}): {args.out}/report.md")


def cmd_export(args) -> None:
    from .db import open_database, ratings_frame

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise LipsyncError(f"The export file must end in .csv or .parquet, not {out.suffix or 'nothing'}.")
    df = ratings_frame(open_database(args.db, must_exist=True))
    from lipsync.files import atomic_file

    with atomic_file(out) as tmp:
        if out.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    print(f"wrote {len(df)} ratings to {out}")


def cmd_loadtest(args) -> None:
    import json

    from .loadtest import run_load

    report = run_load(args.url, raters=args.raters, trials=args.trials, concurrency=args.concurrency,
                      admin_secret=Path(args.admin_secret_file).read_text().strip() if args.admin_secret_file else None,
                      timeout_s=args.timeout)
    print(json.dumps(report.summary(), indent=2))


def main(argv: list[str] | None = None) -> int:
    from .server import JOINS_PER_CLIENT_HOUR
    from .study import DEFAULT_MIN_WATCH

    setup_cache_env()
    p = argparse.ArgumentParser(prog="python -m human_study", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", help="make a study folder from an eval.run results folder")
    c.add_argument("--from", dest="results", required=True, help="the eval.run --out folder")
    c.add_argument("--out", required=True, help="the study file to write, e.g. study/study.yaml (media/ goes beside it)")
    c.add_argument("--methods", nargs="+", help="methods to compare (default: every non-ablation method in the results)")
    c.add_argument("--reference", default="lipsync3d", help="with --pairs reference: the method compared with each other")
    c.add_argument("--pairs", default="reference", choices=["reference", "all"])
    c.add_argument("--questions", nargs="+", help="ab_realism ab_lipsync ab_quality mos_realism mos_lipsync mos_quality (default: all)")
    c.add_argument("--trials-per-rater", type=int, default=20)
    c.add_argument("--practice", type=int, default=2, help="practice trials before the scored ones")
    c.add_argument("--attention", type=int, default=2, help="attention checks per rater (0: none)")
    c.add_argument("--attention-shift", type=float, default=0.5, help="seconds the attention copy's picture lags its sound")
    c.add_argument("--title")
    c.add_argument("--min-watch", type=float, default=DEFAULT_MIN_WATCH,
                   help="an answer counts only once this share of the trial's video has had time to play (0: no check)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_create)

    s = sub.add_parser("serve", help="host the rater app and the admin pages")
    s.add_argument("--study", required=True)
    s.add_argument("--db", help="database URL (default: sqlite:///STUDY_DIR/ratings.db; postgresql://... needs the [postgres] extra)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7870)
    s.add_argument("--admin-secret-file", help="file holding the admin secret (default: STUDY_DIR/admin_secret.txt, made if missing)")
    s.add_argument("--public-url", help="the address raters use, e.g. https://study.example.org (invite links start "
                                       "with it; default: the address the admin page is opened at)")
    s.add_argument("--enrollment-code-file", help="file holding a code that joining through the open link needs "
                                                  "(share the link as PUBLIC_URL/?code=CODE)")
    s.add_argument("--join-rate", type=float, default=JOINS_PER_CLIENT_HOUR,
                   help="open-link joins allowed per client address per hour (raise it for raters who share an "
                        "address, e.g. a lab behind NAT; 0: no limit)")
    s.add_argument("--secure-cookies", action="store_true",
                   help="mark the admin cookie Secure (set it when the server is reached over HTTPS)")
    s.add_argument("--forwarded-allow-ips", help="addresses of reverse proxies whose X-Forwarded-For/-Proto to "
                                                 "trust (default: 127.0.0.1)")
    s.add_argument("--log-level", default="warning")
    s.set_defaults(func=cmd_serve)

    a = sub.add_parser("analyze", help="preference rates, MOS, Bradley-Terry, agreement, attention")
    a.add_argument("--db", required=True, help="database URL, e.g. sqlite:///study/ratings.db")
    a.add_argument("--out", required=True)
    a.add_argument("--exclude-flagged", action="store_true", help="leave out raters who failed attention checks")
    a.add_argument("--max-attention-failures", type=int, default=0)
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=cmd_analyze)

    e = sub.add_parser("export", help="every rating as CSV or Parquet")
    e.add_argument("--db", required=True)
    e.add_argument("--out", required=True, help="ratings.csv or ratings.parquet")
    e.set_defaults(func=cmd_export)

    lt = sub.add_parser("loadtest", help="simulated raters against a running server (loopback only)")
    lt.add_argument("--url", default="http://127.0.0.1:7870")
    lt.add_argument("--raters", type=int, default=50)
    lt.add_argument("--trials", type=int, default=20, help="answers per rater (at most the study's trials)")
    lt.add_argument("--concurrency", type=int, default=50)
    lt.add_argument("--timeout", type=float, default=300)
    lt.add_argument("--admin-secret-file")
    lt.set_defaults(func=cmd_loadtest)

    args = p.parse_args(argv)
    try:
        args.func(args)
    except LipsyncError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
