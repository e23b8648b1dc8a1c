"""``python -m musicrec.service --params params/default.yaml``: serve a run on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import sys

from musicrec.config import ProfileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicrec.service", description=__doc__)
    parser.add_argument("--params", default="params/default.yaml", help="the profile of the run to serve")
    parser.add_argument("--root", default=".", help="the project root (data/ and outputs/ are under it)")
    parser.add_argument("--host", default=None, help="bind address (default: service.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: service.port, 8000)")
    parser.add_argument(
        "--db-path", default=None, help="the SQLite store (default: outputs/<run>/service/events.sqlite)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads the artefacts)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from musicrec.service.app import serve

    try:
        serve(
            args.params,
            host=args.host,
            port=args.port,
            root=args.root,
            db_path=args.db_path,
            workers=args.workers,
            log_level=args.log_level,
        )
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
