"""The ``relay`` command: ``serve``, ``send`` and ``receive``. It only parses, calls the library and formats.

Exit codes: 0 success; 1 the transfer failed or was refused (the message says why); 2 bad usage;
3 the relay could not be reached; 4 a problem on this machine (file exists, unsafe name, disk full...);
5 the code was wrong (nothing was sent; start again with a new code); 6 the data was altered on the way
(something did not authenticate; nothing was stored under a final name); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from collections.abc import Coroutine
from typing import Any, TextIO

from relay import protocol as p
from relay.config import Settings
from relay.tuning import tune_allocator
from clients import crypto
from clients.connection import DEFAULT_RELAY, default_relay_url
from clients.errors import LocalFailure, RelayUnavailable, TransferError
from clients.progress import ProgressBar, human_size
from clients.transfer import ReceiveOptions, Reporter, SendOptions, check_words, receive, send

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_LOCAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_WRONG_CODE, EXIT_TAMPERED = 5, 6
EXIT_CODES_HELP = (
    "exit status: 0 done; 1 failed or refused; 2 bad usage; 3 relay unreachable; 4 a problem on this machine; "
    "5 the code was wrong (nothing was sent: start again with a new code); 6 the data was altered on the way "
    "(nothing was stored); 130 interrupted"
)
CODE_ENV = "RELAY_CODE"
SHOWN_NAMES = 20


class TerminalReporter(Reporter):
    """Prints status lines, and a progress bar when stdout is a terminal and not ``--quiet``."""

    def __init__(self, out: TextIO, quiet: bool, relay_url: str) -> None:
        self.out = out
        self.quiet = quiet
        self.relay_url = relay_url
        self.bar: ProgressBar | None = None
        self.show_bar = not quiet and out.isatty()

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out, flush=True)

    def waiting(self, code: str, receivers: int) -> None:
        relay_flag = "" if self.relay_url in ("", DEFAULT_RELAY) else f" --relay {self.relay_url}"
        # The code is printed even with --quiet, and flushed at once: scripts read it from a pipe.
        print(f"Code: {code}", file=self.out, flush=True)
        who = "the receiver" if receivers == 1 else f"each of the {receivers} receivers"
        self.say(f"On the other computer ({who}) run:\n  relay receive{relay_flag} {code}")

    def joined(self, joined: int, expected: int) -> None:
        self.say(f"Receiver {joined} of {expected} connected.")

    def offered(self, offer: p.Offer) -> None:
        self.say(describe_offer(offer))

    def started(self, total: int) -> None:
        if self.show_bar:
            self.bar = ProgressBar(self.out, total)

    def advanced(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)

    def finished(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def abandon(self) -> None:
        if self.bar is not None:
            self.out.write("\n")
            self.bar = None


def describe_offer(offer: p.Offer) -> str:
    """A summary of an offer with every name escaped: names come from the sender and are hostile."""
    lines = [f"Offered: {len(offer.files)} file(s), {human_size(offer.total_size)} in all"
             + (f", {len(offer.dirs)} empty folder(s)" if offer.dirs else "")]
    for entry in offer.files[:SHOWN_NAMES]:
        lines.append(f"  {p.escape_text(entry.path)}  ({human_size(entry.size)})")
    for folder in offer.dirs[: max(0, SHOWN_NAMES - len(offer.files))]:
        lines.append(f"  {p.escape_text(folder)}/")
    hidden = len(offer.files) + len(offer.dirs) - (len(lines) - 1)
    if hidden > 0:
        lines.append(f"  ... and {hidden} more")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Send files through a relay server, encrypted end "
                                     "to end: the relay never sees names, contents or the secret words of the code.",
                                     epilog=EXIT_CODES_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the relay server", description="Run the relay server. "
                                       "Every flag can also be set as a RELAY_<NAME> environment variable.")
    for spec in dataclasses.fields(Settings):
        flag = "--" + spec.name.replace("_", "-")
        kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
        serve_parser.add_argument(flag, dest=spec.name, default=None, type={"int": int, "float": float}.get(kind, str),
                                  help=f"{spec.metadata.get('help', '')} (env RELAY_{spec.name.upper()}, default {spec.default})")

    relay_help = f"relay URL (env RELAY_URL, default {DEFAULT_RELAY}); http(s):// is mapped to ws(s)://"
    send_parser = commands.add_parser("send", help="send files and folders", description="Send files and folders.",
                                      epilog=EXIT_CODES_HELP)
    send_parser.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to send")
    send_parser.add_argument("--relay", default="", help=relay_help)
    send_parser.add_argument("--code", default=None, metavar="WORDS",
                             help="use these secret words instead of three generated ones (the relay still picks the "
                             "number in front); short words are easy to guess, and argv is visible to other users "
                             "of this computer")
    send_parser.add_argument("--receivers", type=int, default=1, help="how many receivers to wait for (default 1)")
    send_parser.add_argument("--chunk-size", type=int, default=p.DEFAULT_CHUNK_SIZE, help=argparse.SUPPRESS)
    send_parser.add_argument("--quiet", action="store_true", help="print only the code line and errors")

    receive_parser = commands.add_parser("receive", help="receive what a sender offers",
                                         description="Receive files into a folder.", epilog=EXIT_CODES_HELP)
    receive_parser.add_argument("code", nargs="?", default=None,
                                help=f"the code the sender shows, e.g. 42-ocean-table-actor. Arguments are visible to "
                                f"other users of this computer (ps): prefer {CODE_ENV}=... or typing it at the "
                                "prompt you get when it is left out")
    receive_parser.add_argument("--relay", default="", help=relay_help)
    receive_parser.add_argument("--output", "-o", default=".", help="folder to write into (default: current folder)")
    receive_parser.add_argument("--yes", "-y", action="store_true", help="accept without asking")
    receive_parser.add_argument("--overwrite", action="store_true", help="replace files that already exist")
    receive_parser.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    if args.command == "serve":
        return run_serve(args)
    try:
        if args.command == "send":
            return run(run_send(args))
        return run(run_receive(args))
    except KeyboardInterrupt:
        print("relay: cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a transfer on uvloop where it is installed: its socket I/O costs a fraction of asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run_serve(args: argparse.Namespace) -> int:
    from relay.server import serve  # the server's imports are not needed by send/receive

    overrides = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(Settings)}
    try:
        settings = Settings.from_env(**overrides)
    except (TypeError, ValueError) as exc:
        return fail(str(exc), EXIT_USAGE)
    serve(settings)
    return EXIT_OK


async def run_send(args: argparse.Namespace) -> int:
    words = ""
    if args.code is not None:
        try:
            words = check_words(args.code)
        except crypto.InvalidCode:
            return fail("the words of a code are letters and digits separated by '-', e.g. ocean-table-actor",
                        EXIT_USAGE)
    if args.receivers < 1:
        return fail("--receivers must be at least 1", EXIT_USAGE)
    reporter = TerminalReporter(sys.stdout, args.quiet, args.relay or default_relay_url())
    options = SendOptions(words, args.relay, args.receivers, args.chunk_size)
    return await _run(send(args.paths, options, reporter), reporter, "Sent; every receiver authenticated every file.")


def read_code(given: str | None) -> str | None:
    """The code from argv, else ``RELAY_CODE``, else a prompt when stdin is a terminal; ``None`` if there is none."""
    if given is None:
        given = os.environ.get(CODE_ENV) or None
    if given is None and sys.stdin.isatty():
        try:
            given = input("Code: ")
        except EOFError:
            return None
    return given


async def run_receive(args: argparse.Namespace) -> int:
    typed = read_code(args.code)
    if typed is None:
        return fail(f"give the code the sender shows (as an argument, in {CODE_ENV}, or at the prompt)", EXIT_USAGE)
    code = crypto.normalize_code(typed)
    try:
        crypto.split_code(code)
    except crypto.InvalidCode:
        return fail("that is not a code: it looks like 42-ocean-table-actor", EXIT_USAGE)
    output = Path(args.output)
    if not output.is_dir():
        return fail(f"the output folder does not exist: {output}", EXIT_USAGE)
    reporter = TerminalReporter(sys.stdout, args.quiet, args.relay or default_relay_url())

    async def confirm(offer: p.Offer) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise LocalFailure(p.ErrorCode.DECLINED, "not asking on a non-terminal stdin: pass --yes to accept")
        if args.quiet:
            print(describe_offer(offer), flush=True)
        answer = await asyncio.to_thread(input, "Accept? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    options = ReceiveOptions(code, output, args.relay, args.overwrite)
    success = f"Received into {output}; every file authenticated."
    return await _run(receive(options, confirm, reporter), reporter, success)


async def _run(transfer: object, reporter: TerminalReporter, success: str) -> int:
    try:
        await transfer  # type: ignore[misc]
    except RelayUnavailable as exc:
        reporter.abandon()
        return fail(str(exc), EXIT_UNREACHABLE)
    except LocalFailure as exc:
        reporter.abandon()
        return fail(str(exc), EXIT_LOCAL)
    except TransferError as exc:
        reporter.abandon()
        if exc.code is p.ErrorCode.WRONG_CODE:
            return fail(str(exc), EXIT_WRONG_CODE)
        if exc.code is p.ErrorCode.TAMPERED:
            return fail(str(exc), EXIT_TAMPERED)
        return fail(str(exc), EXIT_FAILED)
    reporter.say(success)
    return EXIT_OK


def fail(message: str, code: int) -> int:
    print(f"relay: error: {p.escape_text(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
