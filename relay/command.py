"""The ``relay`` command: ``relay serve`` is the server's own; every other subcommand goes to ``clients.cli``.

The server owns its flags: one per ``Settings`` field, each also a ``RELAY_<NAME>`` environment variable, each
checked (ASCII digits, bounded, in range) before anything listens. A bad value is one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from relay.protocol import escape_text
from relay.config import ENV_PREFIX, Settings, SettingsError, parse_setting, setting_name

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
    def convert(raw: str) -> object:
        try:
            return parse_setting(spec.type, raw, spec.name)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(setting_name(spec.name) + " ")) from None

    convert.__name__ = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "value")
    return convert


def build_parser() -> argparse.ArgumentParser:
    """``relay --help`` (every subcommand) and the full parser of ``relay serve``."""
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
    """Run ``relay serve`` here; hand any other subcommand (and its flags) to ``clients.cli.main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in CLIENT_COMMANDS:
        from clients import cli  # the clients need nothing of the server, and the server nothing of them

        return cli.main(args)
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
        from clients import cli  # top-level flags of the client command (e.g. --version)

        return cli.main(args)
    try:
        namespace = build_parser().parse_args(args)  # serve, help, or an unknown subcommand (exit 2)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_serve(namespace)


def run_serve(args: argparse.Namespace) -> int:
    """Read the settings (environment, then flags), then serve until SIGTERM or Ctrl-C."""
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
    print(f"{PROG}: error: {escape_text(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
