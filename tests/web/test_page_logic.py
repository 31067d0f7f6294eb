"""The page's pure modules under Node: the stored-zip writer read back by Python's zipfile, the selection rules,
the end-of-transfer words and the local names of a received folder. No browser: clients/web/test/page-cases.mjs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"


def run_cases(**cases: object) -> dict:
    node = shutil.which("node")
    assert node, "Node.js is needed to run the web client's modules"
    defaults: dict[str, object] = {"zips": [], "segments": [], "selections": [], "ends": [], "zipNames": []}
    finished = subprocess.run([node, str(WEB / "test" / "page-cases.mjs")], input=json.dumps({**defaults, **cases}),
                              capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


@pytest.mark.parametrize("force_zip64", [False, True])
def test_stored_zip_is_read_back_by_python_zipfile(tmp_path: Path, force_zip64: bool):
    files = {"tree/a.bin": os.urandom(5000), "tree/sub/ünï名.txt": b"text\n", "tree/empty.dat": b"",
             "top.txt": os.urandom(1)}
    out = tmp_path / "out.zip"
    run_cases(zips=[{"out": str(out), "forceZip64": force_zip64, "dirs": ["tree/emptydir", "tree/sub/deeper"],
                     "files": [{"path": path, "hex": data.hex()} for path, data in files.items()]}])
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # every CRC-32 matches
        names = archive.namelist()
        assert names == ["tree/emptydir/", "tree/sub/deeper/", *files]
        for path, data in files.items():
            info = archive.getinfo(path)
            assert info.compress_type == zipfile.ZIP_STORED
            assert archive.read(path) == data
        assert archive.getinfo("tree/emptydir/").is_dir()
    if force_zip64:
        # The ZIP64 end records are there (signature of the ZIP64 end of central directory record).
        assert b"PK\x06\x06" in out.read_bytes() and b"PK\x06\x07" in out.read_bytes()
    else:
        assert b"PK\x06\x06" not in out.read_bytes()


def test_zip_is_named_after_a_single_top_folder():
    names = run_cases(zipNames=[
        {"files": [{"path": "photos/a.jpg"}, {"path": "photos/b/c.jpg"}], "dirs": []},
        {"files": [], "dirs": ["photos"]},
        {"files": [{"path": "a.txt"}, {"path": "b.txt"}], "dirs": []},
        {"files": [{"path": "photos/a.jpg"}, {"path": "notes.txt"}], "dirs": []},
    ])["zipNames"]
    assert names == ["photos.zip", "photos.zip", "relay-files.zip", "relay-files.zip"]


def test_a_second_file_with_a_taken_name_is_renamed_and_said():
    result = run_cases(selections=[
        [[["report.txt", 3, 1]], [["report.txt", 4, 2]], [["report.txt", 5, 3]]],
        [[["report.txt", 3, 1]], [["report.txt", 3, 1]]],  # the same file picked twice
        [[["Report.TXT", 3, 1], ["report.txt", 4, 1]]],
    ])["selections"]
    assert result[0]["paths"] == ["report.txt", "report (2).txt", "report (3).txt"]
    assert any("sent as report (2).txt" in note for note in result[0]["notes"])
    assert result[1]["paths"] == ["report.txt"] and result[1]["notes"] == ["report.txt was already selected."]
    assert result[2]["paths"] == ["Report.TXT", "report (2).txt"]


def test_a_name_that_cannot_be_sent_leaves_out_only_that_file():
    result = run_cases(selections=[[[["good.txt", 1, 1], ["bad\x01name.txt", 1, 1], ["also-good", 2, 1]]]])
    selection = result["selections"][0]
    assert selection["paths"] == ["good.txt", "also-good"]
    assert len(selection["notes"]) == 1
    assert "Left out bad\\x01name.txt" in selection["notes"][0] and "other files are selected" in selection["notes"][0]


@pytest.mark.parametrize(("offered", "local"), [
    ("plain.txt", "plain.txt"), ("what?.txt", "what_.txt"), ('a<b>c:d"e|f*g', "a_b_c_d_e_f_g"),
    ("back\\slash", "back_slash"), ("ends.", "ends_"), ("ends. ", "ends__"), ("con", "_con"), ("LPT1.txt", "_LPT1.txt"),
    ("console.txt", "console.txt"),
])
def test_names_a_browser_refuses_get_each_forbidden_character_replaced(offered: str, local: str):
    assert run_cases(segments=[offered])["segments"] == [local]


def test_end_words_say_what_happened_what_was_saved_and_what_next():
    ends = run_cases(ends=[
        {"side": "send", "state": "cancelled", "outcome": {"code": "declined", "by": "peer", "peer": 1},
         "receivers": 1},
        {"side": "send", "state": "cancelled", "outcome": {"code": "declined", "by": "peer", "peer": 2},
         "receivers": 3},
        {"side": "receive", "state": "cancelled", "outcome": {"code": "declined", "by": "you"}},
        {"side": "receive", "state": "cancelled",
         "outcome": {"code": "cancelled", "reason": "wrong files, sorry", "by": "peer", "peer": 0},
         "saved": {"files": 2, "total": 5}},
        {"side": "receive", "state": "failed",
         "outcome": {"code": "room_not_found", "reason": "no such room", "by": "relay"}},
        {"side": "send", "state": "failed", "outcome": {"code": "rate_limited", "by": "relay"}},
        {"side": "send", "state": "failed", "outcome": {"code": "offer_timeout", "by": "relay"}},
        {"side": "receive", "state": "failed", "outcome": {"code": "offer_timeout", "by": "relay"}},
        {"side": "receive", "state": "failed", "outcome": {"code": "peer_left", "by": "relay", "peer": 0},
         "saved": {"files": 1, "total": 3, "keepsPartial": False}},
    ])["ends"]
    declined, declined_of_3, you_declined, cancelled, not_found, limited, offer_send, offer_receive, left = ends
    assert declined["tone"] == "neutral"
    assert declined["text"].startswith("The receiver declined the files. Nothing was delivered.")
    assert "Try again" in declined["text"]
    assert declined_of_3["text"].startswith("Receiver 2 of 3 declined")
    assert you_declined == {"tone": "neutral", "text": "You declined the offer. Nothing was saved.", "quote": None,
                            "quoteBy": None}
    # The sender's words are a quote from them, not part of the page's sentence.
    assert cancelled["quote"] == "wrong files, sorry" and cancelled["quoteBy"] == "the sender"
    assert "wrong files" not in cancelled["text"]
    assert "2 files of 5 were saved and verified; the rest were not." in cancelled["text"]
    assert "Check the code" in not_found["text"] and "Nothing was saved." in not_found["text"]
    assert "Wait a minute, then press Try again." in limited["text"]
    assert offer_send["text"].startswith("Nobody answered the offer in time")
    assert "Nothing was delivered." in offer_send["text"]
    assert "Nothing was saved." in offer_receive["text"]
    assert "Nothing was saved." in left["text"]  # a zip keeps nothing unless every file arrived
    for end in ends:
        assert "(s)" not in end["text"]



def test_a_receiving_page_the_relay_dropped_says_so_in_plain_words():
    # Its resume was refused with `dropped` (docs/protocol.md section 10): the others went on without it.
    dropped, = run_cases(ends=[
        {"side": "receive", "state": "failed", "receivers": 3, "saved": {"files": 0, "total": 2},
         "outcome": {"code": "dropped", "by": "relay", "reason": "receiver 2 did not come back within the resume "
                     "window (300 s) and was dropped; the others went on without it"}},
    ])["ends"]
    assert dropped["tone"] == "bad" and dropped["quote"] is None
    assert dropped["text"] == ("The connection to the relay was lost for longer than the relay waits for a party to "
                               "come back, so the sender went on without this page. Nothing was saved. Ask the "
                               "sender to send again.")


def test_a_progress_title_changes_at_most_once_a_second_and_a_final_title_at_once():
    # Each new document.title costs the browser's UI thread a message (issue 10: 3% of a transfer's CPU at ten
    # per second); the clock is passed in, in milliseconds.
    calls = [["progress", "1% sent", 5000], ["progress", "2% sent", 5400], ["progress", "3% sent", 5999],
             ["progress", "4% sent", 6000], ["progress", "5% sent", 6500], ["final", "Sent", 6600],
             ["progress", "6% sent", 7100]]
    assert run_cases(titles=[calls])["titles"] == [[
        "1% sent · relay", "1% sent · relay", "1% sent · relay", "4% sent · relay", "4% sent · relay",
        "Sent · relay", "6% sent · relay",
    ]]


def test_taking_a_seat_back_doubles_its_wait_to_ten_seconds_within_thirty_attempts_and_the_resume_window():
    # connection.withBackoff, the one loop both pages use (docs/protocol.md section 10), on a fake clock.
    first, never, slow, cancelled = run_cases(backoffs=[
        {"succeedAt": 4, "attemptMs": 0, "stopAfterWaits": None},
        {"succeedAt": None, "attemptMs": 0, "stopAfterWaits": None},
        {"succeedAt": None, "attemptMs": 30_000, "stopAfterWaits": None},  # each attempt waits out its answer
        {"succeedAt": None, "attemptMs": 0, "stopAfterWaits": 2},  # the person cancels during the second wait
    ])["backoffs"]
    assert first == {"waits": [200, 400, 800, 1600], "attempts": 4, "taken": "seat", "tried": 4}
    assert never["waits"] == [200, 400, 800, 1600, 3200, 6400] + [10_000] * 24
    assert never["attempts"] == never["tried"] == 30 and never["taken"] is None
    # The window (300 s) ends it before thirty attempts: no attempt starts once it is over.
    assert slow["attempts"] < 30 and slow["taken"] is None
    assert sum(slow["waits"]) + 30_000 * (slow["tried"]) >= 300_000
    assert sum(slow["waits"][:-1]) + 30_000 * (slow["attempts"] - 1) < 300_000
    assert cancelled == {"waits": [200, 400], "attempts": 2, "taken": None, "tried": 1}
