"""The ``relay`` command's ``send`` and ``receive``. It only parses, checks what it can locally, calls the client
library and formats; ``relay serve`` belongs to the server package (``relay.command`` dispatches to ``main``).

Exit codes: 0 success; 1 the transfer failed or was refused (the message says why); 2 bad usage (including a
malformed relay URL); 3 a well-formed relay could not be reached; 4 a problem on this machine (file exists,
unsafe name, disk full...); 5 the code was wrong (nothing was sent; start again with a new code); 6 the data
was altered on the way (something did not authenticate; nothing was stored under a final name); 130 interrupted.

Transfers are encrypted end to end (protocol v2, ``clients.crypto``): a code is ``<nameplate>-<words>``, the
relay picks the nameplate and never sees the words.

What the other party wrote (a cancel or decline reason, an error it reports) is never printed as this program's
own words: it comes on its own line, quoted, escaped and attributed (``the sender said: "..."``).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from relay import protocol as p
from relay.codes import wordlist
from relay.tuning import tune_allocator  # shared and I/O-free, like relay.codes (not the server)
from clients import crypto
from clients.connection import (
    DEFAULT_RELAY, BadRelayUrl, PeerRefused, RelayUrl, default_relay_url, parse_relay_url, quote_peer_text,
)
from clients.errors import LocalFailure, RelayUnavailable, TransferError
from clients.progress import ProgressBar, human_size
from clients.transfer import (
    DEFAULT_RESUME_WINDOW, WORDS_PER_CODE, Deadlines, ReceiveOptions, Reporter, SendOptions, check_words, receive, send,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_LOCAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_WRONG_CODE, EXIT_TAMPERED, EXIT_DROPPED = 5, 6, 7
EXIT_CODES_HELP = (
    "exit status: 0 done; 1 failed or refused; 2 bad usage; 3 relay unreachable; 4 a problem on this machine; "
    "5 the code was wrong (nothing was sent: start again with a new code); 6 the data was altered on the way "
    "(nothing was stored); 7 a receiver was dropped (it did not come back within the resume window: the sender's "
    "other receivers got every file; the dropped receiver keeps its partial files to resume by hand); "
    "130 interrupted"
)
CODE_ENV = "RELAY_CODE"
SHOWN_NAMES = 20
# Chosen words with fewer bits than this are easy to guess in the one try a code allows (generated: 33 bits).
WEAK_CODE_BITS = 24
# Standard input is spooled to a temporary file (an offer states its size); stop while this much disk is left.
SPOOL_RESERVE = 64 * 1024 * 1024
SPOOL_BLOCK = 1024 * 1024
JSON_PROGRESS_INTERVAL = 0.1  # at most ten progress events a second
LONGEST_ANSWER = 4096  # bytes read at the Accept? prompt before giving up on a line
STDIN_NAME, TEXT_NAME = "stdin", "text.txt"


class UsageError(Exception):
    """A mistake in how the command was called; found before anything is contacted (exit 2)."""


# --- reporting ---------------------------------------------------------------------------------------------


class TerminalReporter(Reporter):
    """Prints status lines, and a progress bar when the stream is a terminal and not ``--quiet``.

    ``out`` is stdout, or stderr when stdout carries received data (``--output -``).
    """

    def __init__(self, out: TextIO, quiet: bool, relay: RelayUrl, relay_flag: str = "", qr: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.relay = relay
        self.relay_flag = relay_flag
        self.qr = qr and not quiet and out.isatty()
        self.bar: ProgressBar | None = None
        self.show_bar = not quiet and out.isatty()

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out, flush=True)

    def connected(self, peer: int, receivers: int) -> None:
        if receivers > peer:
            self.say(f"Waiting for {receivers - peer} more receiver(s) to join; the offer comes once all are in...")

    def waiting(self, code: str, receivers: int) -> None:
        # The code is printed even with --quiet, and flushed at once: scripts read it from a pipe.
        print(f"Code: {code}", file=self.out, flush=True)
        who = "the receiver" if receivers == 1 else f"each of the {receivers} receivers"
        link = self.relay.receive_link(code)
        self.say(f"On the other computer ({who}) run:\n  relay receive{self.relay_flag} {code}\nor open {link}")
        if self.qr:
            self.out.write(qr_code(link))
            self.out.flush()

    def joined(self, joined: int, expected: int) -> None:
        self.say(f"Receiver {joined} of {expected} connected.")

    def offered(self, offer: p.Offer) -> None:
        self.say(describe_offer(offer))

    def started(self, total: int) -> None:
        if self.show_bar:
            self.bar = ProgressBar(self.out, total)

    def reconnecting(self, attempt: int) -> None:
        if self.bar is not None:
            self.out.write("\n")
        if attempt:
            self.say(f"connection lost, reconnecting (attempt {attempt})")
        else:
            self.say("another party's connection was lost; waiting for it to reconnect")

    def resent(self, count: int) -> None:
        if count:
            self.say(f"{human_size(count)} ({count} bytes) sent again after reconnecting")

    def kept(self, count: int) -> None:
        if count:
            self.say(f"resuming an earlier attempt: {human_size(count)} ({count} bytes) were already there and "
                     "are not sent again")

    def changed(self, path: str) -> None:
        self.say(f"{p.escape_text(path)} changed since the last attempt; sending it again from the start")

    def warning(self, text: str) -> None:
        self.say(f"warning: {text}")

    def dropped(self, peer: int) -> None:
        if self.bar is not None:
            self.out.write("\n")
        self.say(f"receiver {peer} did not come back within the resume window and was dropped; the others go on")

    def advanced(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)

    def finished(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def skipped(self, left_out: Sequence[tuple[str, str]]) -> None:
        """Sender, before offering: local paths not sent (``--skip-unreadable``, links to folders...), with why."""
        self.say(f"Left out {len(left_out)} path(s):")
        for path, reason in left_out[:SHOWN_NAMES]:
            self.say(f"  {p.escape_text(str(path))}  ({p.escape_text(reason)})")
        if len(left_out) > SHOWN_NAMES:
            self.say(f"  ... and {len(left_out) - SHOWN_NAMES} more")

    def renamed(self, mappings: Sequence[tuple[str, str]]) -> None:
        """Receiver, before accepting: offered names this system cannot store, and the names they will get."""
        self.say(f"{len(mappings)} name(s) will be stored under another name this system can store:")
        for offered, saved in mappings[:SHOWN_NAMES]:
            self.say(f"  {p.escape_text(offered)} -> {p.escape_text(saved)}")
        if len(mappings) > SHOWN_NAMES:
            self.say(f"  ... and {len(mappings) - SHOWN_NAMES} more")

    def failed(self, message: str, exit_code: int, error: TransferError | None) -> None:
        self.abandon()
        print(f"relay: error: {p.escape_text(message)}", file=sys.stderr, flush=True)
        if isinstance(error, PeerRefused) and error.said:
            print(f"  {error.who} said: {quote_peer_text(error.said)}", file=sys.stderr, flush=True)

    def succeeded(self, line: str) -> None:
        self.say(line)

    def abandon(self) -> None:
        if self.bar is not None:
            self.out.write("\n")
            self.out.flush()
            self.bar = None


class JsonReporter(TerminalReporter):
    """``--json``: one JSON object per line on stdout, for scripts; errors also go to stderr as one line.

    Events: ``code``, ``peer_joined``, ``connected``, ``offer``, ``started``, ``progress`` (at most ten a
    second, and once at the end), ``skipped``, ``renamed``, ``dropped``, ``text``, ``done``, ``error`` (with
    ``exit``).
    """

    def __init__(self, relay: RelayUrl, relay_flag: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(sys.stdout, True, relay, relay_flag)
        self.clock = clock
        self.total = 0
        self.done = 0
        self.last_progress = -math.inf

    def emit(self, event: str, **fields: Any) -> None:
        # ensure_ascii: a hostile name's control characters and lone surrogates become \u escapes.
        print(json.dumps({"event": event, **fields}, ensure_ascii=True), file=sys.stdout, flush=True)

    def connected(self, peer: int, receivers: int) -> None:
        self.emit("connected", peer=peer, receivers=receivers)

    def waiting(self, code: str, receivers: int) -> None:
        self.emit("code", code=code, receivers=receivers, link=self.relay.receive_link(code),
                  command=f"relay receive{self.relay_flag} {code}")

    def joined(self, joined: int, expected: int) -> None:
        self.emit("peer_joined", joined=joined, receivers=expected)

    def offered(self, offer: p.Offer) -> None:
        self.emit("offer", kind=offer.kind.value, total=offer.total_size, dirs=list(offer.dirs),
                  files=[{"path": entry.path, "size": entry.size} for entry in offer.files])

    def started(self, total: int) -> None:
        self.total = total
        self.emit("started", total=total)

    def advanced(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.last_progress >= JSON_PROGRESS_INTERVAL:
            self.last_progress = now
            self.emit("progress", done=done, total=self.total)

    def finished(self) -> None:
        self.emit("progress", done=self.total, total=self.total)

    def skipped(self, left_out: Sequence[tuple[str, str]]) -> None:
        self.emit("skipped", paths=[{"path": str(path), "reason": reason} for path, reason in left_out])

    def renamed(self, mappings: Sequence[tuple[str, str]]) -> None:
        self.emit("renamed", names=[{"offered": offered, "saved": saved} for offered, saved in mappings])

    def dropped(self, peer: int) -> None:
        self.emit("dropped", peer=peer)

    def failed(self, message: str, exit_code: int, error: TransferError | None) -> None:
        said = {"peer": error.who, "said": error.said} if isinstance(error, PeerRefused) and error.said else {}
        self.emit("error", exit=exit_code, code=error.code.value if error else None,
                  message=error.what if isinstance(error, PeerRefused) else p.escape_text(message), **said)
        super().failed(message, exit_code, error)

    def succeeded(self, line: str) -> None:
        self.emit("done", message=line)


def describe_offer(offer: p.Offer) -> str:
    """A summary of an offer with every name escaped: names come from the sender and are hostile."""
    if offer.kind is p.OfferKind.TEXT:
        return f"Offered: a text of {human_size(offer.total_size)}"
    if offer.kind is p.OfferKind.STDIN:
        return f"Offered: data the sender piped in, {human_size(offer.total_size)}"
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


def qr_code(link: str) -> str:
    """The link as a QR code drawn with half-block characters (two modules a character row)."""
    import io

    import segno  # only a terminal needs it: imported here

    drawn = io.StringIO()
    segno.make(link, error="l").terminal(out=drawn, compact=True)
    return drawn.getvalue()


def escape_for_terminal(text: str) -> str:
    """A received text for a terminal: line breaks and tabs kept, every other control character escaped."""
    return "".join(char if char in "\n\t" else p.escape_text(char) for char in text)


def code_strength_bits(code: str) -> float:
    """How hard a normalised code is to guess: 11 bits a word of the list, else by its characters' alphabet."""
    words = set(wordlist())
    bits = 0.0
    for part in code.split("-"):
        if part in words:
            bits += math.log2(len(words))
        elif part:
            alphabet = (10 if any(c.isdigit() for c in part) else 0) + (26 if any(c.isalpha() for c in part) else 0)
            bits += len(part) * math.log2(max(alphabet, 2))
    return bits


# --- the command line --------------------------------------------------------------------------------------


def version() -> str:
    from importlib import metadata  # ~10 ms of imports that only --version needs: not paid by every transfer

    try:
        return metadata.version("relay")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked (argparse's own action takes it at build time)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "show the version and exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"relay {version()}")  # on stdout, as argparse's "version" action prints it
        parser.exit()


RECEIVE_EPILOG = """\
Piped data and texts: a text (relay send --text) is printed to standard output (control characters escaped
when that is a terminal). Data piped into 'relay send -' is saved as a file named 'stdin' unless you pass
--output -, which writes it to standard output (status lines then go to standard error). Either way nothing
is shown or written before every byte authenticated: it is received into a temporary folder first (TMPDIR).
"""

JSON_HELP = ("print one JSON object per line on stdout instead of text, for scripts (events: code, peer_joined, "
             "connected, offer, started, progress, skipped, renamed, text, done, error); see README")


RESUME_HELP = ("how long to keep trying when the connection to the relay drops mid-transfer (default 300; "
               "0: give up at once)")


def resume_window(value: float) -> Deadlines:
    if not 0 <= value <= 86_400 or value != value:
        raise UsageError("--resume-window must be 0 to 86400 seconds")
    return Deadlines(resume_window=value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Send files through a relay server, encrypted end "
                                     "to end: the relay never sees names, contents or the secret words of the code.",
                                     epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)

    relay_help = f"relay URL (env RELAY_URL, default {DEFAULT_RELAY}); http(s):// is mapped to ws(s)://"
    proxy_note = ("HTTPS_PROXY / ALL_PROXY (and HTTP_PROXY for ws://, NO_PROXY) are honoured; "
                  "a private relay's token goes in RELAY_TOKEN.")
    send_parser = commands.add_parser(
        "send", help="send files and folders, piped data or a text",
        description="Send files and folders; '-' sends what is piped into standard input; --text sends a text.",
        epilog=proxy_note + " " + EXIT_CODES_HELP)
    send_parser.add_argument("paths", nargs="*", metavar="PATH", help="files and folders to send, or - for stdin")
    send_parser.add_argument("--text", default=None, help="send this text instead of files (at most 1 MiB)")
    send_parser.add_argument("--relay", default="", help=relay_help)
    send_parser.add_argument("--code", default=None, metavar="WORDS",
                             help=f"use these secret words instead of {WORDS_PER_CODE} generated ones (the relay "
                             "still picks the number in front); short words are easy to guess, and arguments are "
                             "visible to other users of this computer")
    send_parser.add_argument("--receivers", type=int, default=1, help="how many receivers to wait for (default 1)")
    send_parser.add_argument("--skip-unreadable", action="store_true",
                             help="leave out files and folders that cannot be read, and list them")
    send_parser.add_argument("--chunk-size", type=int, default=p.DEFAULT_CHUNK_SIZE, help=argparse.SUPPRESS)
    send_parser.add_argument("--resume-window", type=float, default=DEFAULT_RESUME_WINDOW, metavar="SECONDS",
                             help=RESUME_HELP)
    send_parser.add_argument("--quiet", action="store_true", help="print only the code line and errors")
    send_parser.add_argument("--json", action="store_true", help=JSON_HELP)

    receive_parser = commands.add_parser(
        "receive", help="receive what a sender offers", description="Receive files into a folder.",
        epilog=RECEIVE_EPILOG + proxy_note + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    receive_parser.add_argument("code", nargs="?", default=None,
                                help=f"the code the sender shows, e.g. 42-ocean-table-actor. Arguments are visible to "
                                f"other users of this computer (ps): prefer {CODE_ENV}=... or typing it at the "
                                "prompt you get when it is left out")
    receive_parser.add_argument("--relay", default="", help=relay_help)
    receive_parser.add_argument("--output", "-o", default=".",
                                help="folder to write into, created if missing (default: current folder); "
                                     "- writes piped data to standard output")
    receive_parser.add_argument("--yes", "-y", action="store_true", help="accept without asking")
    receive_parser.add_argument("--overwrite", action="store_true", help="replace files that already exist")
    receive_parser.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    receive_parser.add_argument("--resume-window", type=float, default=DEFAULT_RESUME_WINDOW, metavar="SECONDS",
                                help=RESUME_HELP)
    receive_parser.add_argument("--json", action="store_true", help=JSON_HELP + "; needs --yes")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``relay send`` or ``relay receive`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    tune_allocator()  # chunk-sized buffers stay on the heap: about half the CPU of a transfer (relay/tuning.py)
    try:
        if args.command == "send":
            return send_command(args)
        return receive_command(args)
    except UsageError as exc:
        if args.json:
            json_error(EXIT_USAGE, p.ErrorCode.BAD_REQUEST, str(exc))
        return fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        if args.json:
            json_error(EXIT_INTERRUPTED, p.ErrorCode.CANCELLED, "cancelled")
        print("relay: cancelled", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def json_error(exit_code: int, code: p.ErrorCode, message: str) -> None:
    """``--json``'s ``error`` event for what ends the command outside a transfer (usage, Ctrl-C)."""
    print(json.dumps({"event": "error", "exit": exit_code, "code": code.value, "message": p.escape_text(message)}),
          flush=True)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a transfer on uvloop where it is installed: its socket I/O costs a fraction of asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def checked_relay(value: str) -> tuple[RelayUrl, str, str]:
    """The parsed relay, the URL to connect to, and the ``--relay`` flag to show the other side (if needed)."""
    url = value or default_relay_url()
    try:
        relay = parse_relay_url(url)
    except BadRelayUrl as exc:
        raise UsageError(str(exc)) from exc
    return relay, url, "" if url == DEFAULT_RELAY else f" --relay {url}"


# --- send --------------------------------------------------------------------------------------------------


def send_command(args: argparse.Namespace) -> int:
    if args.text is not None and args.paths:
        raise UsageError("--text sends a text alone: name no paths with it")
    if args.text is None and not args.paths:
        raise UsageError("name the files and folders to send, - for standard input, or use --text")
    if "-" in args.paths and len(args.paths) > 1:
        raise UsageError("- (standard input) is sent alone: name no other paths with it")
    if args.receivers < 1:
        raise UsageError("--receivers must be at least 1")
    words = ""
    if args.code is not None:
        try:
            words = check_words(args.code)
        except crypto.InvalidCode as exc:
            raise UsageError("the words of a code are letters and digits separated by '-', e.g. ocean-table-actor") \
                from exc
        bits = code_strength_bits(words)
        if bits < WEAK_CODE_BITS:
            print(f"relay: warning: the words {words} are easy to guess (about {bits:.0f} bits; generated words have "
                  f"{code_strength_bits('-'.join(wordlist()[:WORDS_PER_CODE])):.0f}): a stranger who guesses them in "
                  "the one try a code allows gets the files", file=sys.stderr)
    text = None
    if args.text is not None:
        try:
            text = args.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError("the text is not valid Unicode") from exc
        if len(text) > p.MAX_TEXT_OFFER:
            raise UsageError(f"a text is at most {human_size(p.MAX_TEXT_OFFER)}; send a file instead")
    relay, url, relay_flag = checked_relay(args.relay)
    reporter = make_reporter(args, sys.stdout, relay, relay_flag, qr=True)
    options = dict(words=words, relay_url=url, receivers=args.receivers, chunk_size=args.chunk_size,
                   deadlines=resume_window(args.resume_window))
    if args.skip_unreadable:
        options["skip_unreadable"] = True
    paths: list[str | os.PathLike[str]]
    with tempfile.TemporaryDirectory(prefix="relay-send-") as spool:
        try:
            if text is not None:
                (Path(spool) / TEXT_NAME).write_bytes(text)
                paths, options["kind"] = [str(Path(spool) / TEXT_NAME)], p.OfferKind.TEXT
            elif args.paths == ["-"]:
                if sys.stdin.isatty():
                    reporter.say("Reading standard input until end of file (Ctrl-D)...")
                paths, options["kind"] = [str(spool_stdin(sys.stdin.buffer, Path(spool)))], p.OfferKind.STDIN
            else:
                paths = list(args.paths)
        except LocalFailure as exc:
            reporter.failed(str(exc), EXIT_LOCAL, exc)
            return EXIT_LOCAL
        return run(transfer(send(paths, send_options(**options), reporter), reporter,
                            "Sent; every receiver authenticated every file."))


def send_options(**values: Any) -> SendOptions:
    """``SendOptions`` from the values this branch knows; ``skip_unreadable`` needs the receiving-side branch."""
    known = set(SendOptions.__slots__)
    if values.get("skip_unreadable") and "skip_unreadable" not in known:
        raise UsageError("--skip-unreadable is not supported by this version of the client library")
    return SendOptions(**{name: value for name, value in values.items() if name in known})


def spool_stdin(source: BinaryIO, folder: Path) -> Path:
    """Copy standard input to ``folder/stdin`` (an offer states its size), stopping before the disk fills up."""
    target = folder / STDIN_NAME
    with target.open("wb") as spool:
        while block := source.read(SPOOL_BLOCK):
            free = shutil.disk_usage(folder).free
            if free < len(block) + SPOOL_RESERVE:
                raise LocalFailure(p.ErrorCode.DISK_FULL, f"standard input does not fit in {folder} ("
                                   f"{human_size(free)} free); set TMPDIR to a folder with more room")
            spool.write(block)
    return target


# --- receive -----------------------------------------------------------------------------------------------


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


def receive_command(args: argparse.Namespace) -> int:
    typed = read_code(args.code)
    if typed is None:
        raise UsageError(f"give the code the sender shows (as an argument, in {CODE_ENV}, or at the prompt)")
    code = crypto.normalize_code(typed)
    try:
        crypto.split_code(code)
    except crypto.InvalidCode as exc:
        raise UsageError("that is not a code: it looks like 42-ocean-table-actor") from exc
    relay, url, _ = checked_relay(args.relay)
    to_stdout = args.output == "-"
    if args.json and to_stdout:
        raise UsageError("--json and --output - both want standard output: choose one")
    if args.json and not args.yes:
        raise UsageError("--json never asks: pass --yes to accept")
    if not args.yes and not sys.stdin.isatty():
        raise UsageError("not asking on a non-terminal stdin: pass --yes to accept")
    status = sys.stderr if to_stdout else sys.stdout
    reporter = make_reporter(args, status, relay, "")
    created: list[Path] = []
    if not to_stdout:
        output = Path(args.output)
        try:
            created = prepare_output(output)
        except LocalFailure as exc:
            reporter.failed(str(exc), EXIT_LOCAL, exc)
            return EXIT_LOCAL
        if created:
            reporter.say(f"Created the output folder {p.escape_text(str(output))}")
    result = EXIT_INTERRUPTED
    try:
        with tempfile.TemporaryDirectory(prefix="relay-receive-") as staging:
            result = run(receive_into(args, code, url, Path(staging), reporter, to_stdout))
    finally:
        if result != EXIT_OK:
            for folder in reversed(created):  # leave no empty folder we made behind a failed transfer
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return result


def prepare_output(output: Path) -> list[Path]:
    """Check the output folder before joining, creating it (and missing parents) if needed; returns what it made.

    Raises ``UsageError`` for a path that is a file, ``LocalFailure`` for a folder that cannot be written.
    """
    if output.exists() and not output.is_dir():
        raise UsageError(f"the output {output} is a file, not a folder")
    missing = []
    folder = output.absolute()
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"the output {output} cannot be made: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LocalFailure(p.ErrorCode.WRITE_FAILED, f"cannot write into {folder}")
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as exc:
            raise LocalFailure(p.ErrorCode.WRITE_FAILED, f"cannot create {path}: {exc.strerror or exc}") from exc
    return list(reversed(missing))


async def receive_into(args: argparse.Namespace, code: str, url: str, staging: Path,
                       reporter: TerminalReporter, to_stdout: bool) -> int:
    """Receive; files go to ``--output``, a text (and piped data with ``--output -``) to ``staging`` first."""
    output = Path(args.output)

    def output_for(offer: p.Offer) -> Path:
        if offer.kind is p.OfferKind.TEXT or (offer.kind is p.OfferKind.STDIN and to_stdout):
            return staging
        if to_stdout:
            raise LocalFailure(p.ErrorCode.DECLINED, "--output - takes piped data or a text, and this offer is "
                                                     "files: choose a folder with --output")
        return output

    async def confirm(offer: p.Offer) -> bool:
        if args.yes:
            return True
        if args.quiet:
            print(describe_offer(offer), file=reporter.out, flush=True)
        answer = await ask("Accept? [y/N] ", reporter.out)
        return answer.strip().lower() in ("y", "yes")

    options = ReceiveOptions(code, output, url, args.overwrite, output_for=output_for,
                             deadlines=resume_window(args.resume_window))
    where = "standard output" if to_stdout else p.escape_text(str(output))

    async def receive_and_show() -> str:
        offer = await receive(options, confirm, reporter)
        if offer.kind is p.OfferKind.TEXT:
            text = received_file(staging).read_bytes().decode("utf-8", errors="replace")
            if isinstance(reporter, JsonReporter):
                reporter.emit("text", text=text)
            else:
                shown = escape_for_terminal(text) if sys.stdout.isatty() else text
                sys.stdout.write(shown if shown.endswith("\n") or not sys.stdout.isatty() else shown + "\n")
                sys.stdout.flush()
            return "Received a text; it authenticated."
        if to_stdout:
            await asyncio.to_thread(copy_to_stdout, received_file(staging))
        return f"Received into {where}; every file authenticated."

    return await transfer(receive_and_show(), reporter, "")


def received_file(staging: Path) -> Path:
    """The one file a text or stdin offer left in ``staging`` (under whatever name this system stored it)."""
    (found,) = [path for path in staging.rglob("*") if path.is_file()]
    return found


def copy_to_stdout(path: Path) -> None:
    """Write verified piped data to stdout: as is to a pipe or file, escaped to a terminal (it may hold escapes)."""
    with path.open("rb") as source:
        if not sys.stdout.isatty():
            shutil.copyfileobj(source, sys.stdout.buffer, SPOOL_BLOCK)
            sys.stdout.buffer.flush()
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while block := source.read(SPOOL_BLOCK):
            sys.stdout.write(escape_for_terminal(decoder.decode(block)))
        sys.stdout.write(escape_for_terminal(decoder.decode(b"", final=True)))
        sys.stdout.flush()


async def ask(prompt: str, out: TextIO) -> str:
    """Read one line from the terminal without a thread, so that Ctrl-C ends the command at once.

    ``input()`` in a worker thread cannot be interrupted: asyncio waits for that thread at shutdown, so an
    interrupted receiver hung until Enter was pressed. Here the event loop watches stdin instead.
    """
    out.write(prompt)
    out.flush()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    answer: asyncio.Future[bytes] = loop.create_future()
    line = bytearray()

    def readable() -> None:
        try:
            data = os.read(fd, LONGEST_ANSWER)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        line.extend(data)
        if (not data or b"\n" in line or len(line) >= LONGEST_ANSWER) and not answer.done():
            answer.set_result(bytes(line).split(b"\n", 1)[0])

    try:
        loop.add_reader(fd, readable)
    except NotImplementedError:  # Windows' proactor loop cannot watch a console: fall back to a thread
        return await asyncio.to_thread(sys.stdin.readline)
    try:
        return (await answer).decode("utf-8", errors="replace")
    finally:
        loop.remove_reader(fd)


# --- shared ------------------------------------------------------------------------------------------------


def make_reporter(args: argparse.Namespace, out: TextIO, relay: RelayUrl, relay_flag: str,
                  qr: bool = False) -> TerminalReporter:
    if args.json:
        return JsonReporter(relay, relay_flag)
    return TerminalReporter(out, args.quiet, relay, relay_flag, qr=qr)


async def transfer(work: Awaitable[object], reporter: TerminalReporter, success: str) -> int:
    """Await a transfer and map its outcome to an exit code and one line (two when the other party spoke).

    ``success`` is the line for a finished transfer, unless ``work`` returns its own.
    """
    try:
        result = await work
    except BadRelayUrl as exc:
        return failed(reporter, exc, EXIT_USAGE)
    except RelayUnavailable as exc:
        return failed(reporter, exc, EXIT_UNREACHABLE)
    except LocalFailure as exc:
        return failed(reporter, exc, EXIT_LOCAL)
    except TransferError as exc:
        if exc.code is p.ErrorCode.WRONG_CODE:
            return failed(reporter, exc, EXIT_WRONG_CODE)
        if exc.code is p.ErrorCode.TAMPERED:
            return failed(reporter, exc, EXIT_TAMPERED)
        if exc.code is p.ErrorCode.DROPPED:
            return failed(reporter, exc, EXIT_DROPPED)
        return failed(reporter, exc, EXIT_FAILED)
    except BrokenPipeError:
        return failed(reporter, None, EXIT_LOCAL, "standard output was closed before everything was written")
    reporter.succeeded(result if isinstance(result, str) else success)
    return EXIT_OK


def failed(reporter: TerminalReporter, error: TransferError | None, exit_code: int, message: str = "") -> int:
    if isinstance(error, PeerRefused):
        message = error.what
    reporter.failed(message or str(error), exit_code, error)
    return exit_code


def fail(message: str, code: int) -> int:
    print(f"relay: error: {p.escape_text(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
