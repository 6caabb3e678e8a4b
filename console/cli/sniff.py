"""`flowdeck sniff URL_OR_FILE`: read one payload and print a ready flow config for it."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from flowdeck.console.cli.common import EXIT_OK, CliError


def add_parsers(sub) -> None:
    p = sub.add_parser("sniff", help="guess a flow config from one payload (a URL or a file)")
    p.add_argument("target", metavar="URL_OR_FILE")
    p.add_argument("--flow", help="flow name (default: from the file or URL name)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the config here (default: stdout)")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    p.set_defaults(fn=cmd_sniff)


def _read(target: str, timeout: float) -> tuple[bytes, str | None]:
    if target.startswith(("http://", "https://")):
        import httpx

        try:
            resp = httpx.get(target, timeout=timeout, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot fetch {target}: {exc}") from None
        if resp.status_code >= 400:
            raise CliError(f"cannot fetch {target}: HTTP {resp.status_code}")
        return resp.content, resp.headers.get("content-type")
    try:
        return Path(target).read_bytes(), None
    except OSError as exc:
        raise CliError(f"cannot read {target}: {exc.strerror}") from None


def cmd_sniff(args) -> int:
    from flowdeck.pipeline.config import NAME_RE
    from flowdeck.pipeline.payload import PayloadError
    from flowdeck.pipeline.sniff import flow_name_for, render_flow, sniff

    body, ctype = _read(args.target, args.timeout)
    is_url = args.target.startswith(("http://", "https://"))
    flow = args.flow or flow_name_for(args.target)
    if not re.match(NAME_RE, flow):
        raise CliError(f"--flow: {flow!r} is not a valid name (letters, digits, _)")
    try:
        guessed = sniff(body, hint=args.target, content_type=ctype)
    except PayloadError as exc:
        raise CliError(f"cannot read the payload: {exc}") from None
    where = args.target
    if not is_url and args.output:
        where = os.path.relpath(os.path.abspath(args.target),
                                os.path.dirname(os.path.abspath(args.output)))
    text = render_flow(guessed, flow, kind="http" if is_url else "file", where=where)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(guessed.fields)} fields, key {guessed.key}, "
              f"{len(guessed.items)} records in the sample)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK
