"""The ``relay`` command: ``relay serve`` is the server's own; every other subcommand goes to ``clients.cli``.

The server owns its flags: one per ``Settings`` field, each also a ``RELAY_<NAME>`` environment variable, each
checked (ASCII digits, bounded, in range) before anything listens. A bad value is one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import sys
from collections.abc import Iterator, Sequence

# Nothing of relay's own at import time: ``relay send``/``relay receive`` need none of the server's settings, and
# the shared modules they do need are imported with the client, under ``_client_start_up`` (section 15 of
# docs/design/speed.md). ``relay serve`` imports relay.config where it builds its parser.

EXIT_OK, EXIT_USAGE = 0, 2
PROG = "relay"
# The client subcommands, listed in ``relay --help``; their own flags and help live in clients.cli.
CLIENT_COMMANDS = {"send": "send files and folders", "receive": "receive what a sender offers"}


class _Parser(argparse.ArgumentParser):
    """argparse with the relay's one-line error format (``relay: error: ...``, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(message)
        raise SystemExit(EXIT_USAGE)


def _setting_type(spec: dataclasses.Field[object]) -> object:
    from relay.config import SettingsError, parse_setting, setting_name

    def convert(raw: str) -> object:
        try:
            return parse_setting(spec.type, raw, spec.name)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(setting_name(spec.name) + " ")) from None

    convert.__name__ = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "value")
    return convert


def build_parser() -> argparse.ArgumentParser:
    """``relay --help`` (every subcommand) and the full parser of ``relay serve``."""
    from relay.config import ENV_PREFIX, Settings

    parser = _Parser(prog=PROG, description="Send files through a relay server, or run one.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,send,receive}")
    serve = commands.add_parser(
        "serve", help="run the relay server",
        description=f"Run the relay server. Every flag can also be set as a {ENV_PREFIX}<NAME> environment variable.",
    )
    for spec in dataclasses.fields(Settings):
        flag = "--" + spec.name.replace("_", "-")
        shown = "" if spec.name == "token" else f", default {spec.default}"
        serve.add_argument(flag, dest=spec.name, default=None, type=_setting_type(spec),  # type: ignore[arg-type]
                           help=f"{spec.metadata.get('help', '')} (env {ENV_PREFIX}{spec.name.upper()}{shown})")
    for name, text in CLIENT_COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``relay serve`` here; hand any other subcommand (and its flags) to ``clients.cli.main``.

    Without ``argv`` this is the program itself (the console script): the client is then imported with
    ``_client_start_up``. A caller that passes ``argv`` (a test, another program) keeps its collector as it was.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    # client subcommands, and top-level flags of the client command (e.g. --version)
    if args and (args[0] in CLIENT_COMMANDS or args[0].startswith("-") and args[0] not in ("-h", "--help")):
        with _client_start_up(program=argv is None):
            from clients import cli  # the clients need nothing of the server, and the server nothing of them

        return cli.main(args)
    try:
        namespace = build_parser().parse_args(args)  # serve, help, or an unknown subcommand (exit 2)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_serve(namespace)


@contextlib.contextmanager
def _client_start_up(program: bool) -> Iterator[None]:
    """Import the client with the cyclic garbage collector paused, then freeze what the imports made.

    Why: start-up is a fixed cost of every transfer, a quarter of a sender's CPU for 1 GiB (docs/design/speed.md
    section 15). The imports make about 40,000 objects that live as long as the process (modules, classes,
    functions); while they are made the collector runs dozens of times, each full pass walking all of them again,
    and every later full pass (and the last one at exit) walks them once more. ``gc.freeze()`` moves them to the
    permanent generation, which collections skip: what CPython's documentation advises before a fork, here for
    the same reason without one. Garbage made after start-up is collected as before.
    """
    if not program or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def run_serve(args: argparse.Namespace) -> int:
    """Read the settings (environment, then flags), then serve until SIGTERM or Ctrl-C."""
    from relay.config import Settings, SettingsError

    overrides = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(Settings)}
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        return fail(str(exc))
    from relay.server import serve  # FastAPI and uvicorn only once the settings are known to be good
    from relay.web import AssetsMissing

    try:
        serve(settings)
    except AssetsMissing as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # e.g. the port is taken or the address is not ours
        return fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", 1)
    return EXIT_OK


def fail(message: str, code: int = EXIT_USAGE) -> int:
    from relay.protocol import escape_text

    print(f"{PROG}: error: {escape_text(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
