"""``adapterlab serve``: start the Chainlit app (registered through the ``adapterlab.commands`` entry point,
so ``adapters`` never imports the app)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
PROJECT_ROOT = APP.parent.parent  # holds .chainlit/config.toml, public/ and the generated chainlit.md


def register(sub, bench_sub) -> None:
    serve = sub.add_parser("serve", help="start the chat app (Chainlit) on the adapter catalogue "
                                          "(env ADAPTERLAB_CATALOG, default adapters/) and its base model")
    serve.add_argument("--host", default=os.environ.get("CHAINLIT_HOST", "127.0.0.1"),
                       help="address to listen on (default: %(default)s; env CHAINLIT_HOST)")
    serve.add_argument("--port", type=port_number, default=os.environ.get("CHAINLIT_PORT") or "8000",
                       help="port (default: %(default)s; env CHAINLIT_PORT)")
    serve.add_argument("--open", action="store_true", help="open a browser tab")
    serve.add_argument("--base-model", default=None, help="base model name, Hub id or folder "
                                                          "(default: the catalogue's; env ADAPTERLAB_BASE_MODEL)")
    serve.add_argument("--catalog", default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)


def port_number(value: str) -> int:
    """argparse type: a TCP port (the default comes from $CHAINLIT_PORT, so the message names it)."""
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {value!r} "
                                         "(from --port or $CHAINLIT_PORT)")
    return port


def serve_command(args) -> tuple[list[str], dict[str, str]]:
    """The ``chainlit run`` command line and environment for ``args``."""
    env = dict(os.environ)
    if args.base_model:
        env["ADAPTERLAB_BASE_MODEL"] = args.base_model
    if args.catalog:
        env["ADAPTERLAB_CATALOG"] = str(Path(args.catalog).resolve())
    command = [sys.executable, "-m", "chainlit", "run", str(APP), "--host", args.host, "--port", str(args.port)]
    if not args.open:
        command.append("--headless")
    return command, env


def cmd_serve(args) -> int:
    from adapters.base_models import check_base
    from adapters.catalog import load_catalog

    base = args.base_model or os.environ.get("ADAPTERLAB_BASE_MODEL")
    if base:
        check_base(base)  # before the server starts: it would fail in the background, page up
    catalog = args.catalog or os.environ.get("ADAPTERLAB_CATALOG")
    if catalog:
        load_catalog(catalog)  # a missing folder or a bad spec is named before the server starts
    command, env = serve_command(args)
    print(f"adapterlab: serving on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if os.name == "posix":  # become chainlit, so signals (Ctrl-C, a service manager's TERM) reach it
        os.chdir(PROJECT_ROOT)
        os.execve(command[0], command, env)
    return subprocess.call(command, cwd=PROJECT_ROOT, env=env)


if __name__ == "__main__":  # `python -m chat_app.cli serve` works without the installed entry point
    import chat_app.cli  # the module object the entry point names, not this __main__ copy (or serve is added twice)
    from adapters.cli import main

    sys.exit(main(sys.argv[1:], registrars=[chat_app.cli.register]))
