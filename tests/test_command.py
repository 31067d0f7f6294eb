"""``relay serve`` and its flags (relay/command.py), and the settings they fill (relay/config.py).

Every flag of ``relay serve`` is also a ``RELAY_*`` variable; a malformed or out-of-range value of either is one
line on stderr and exit status 2, before anything listens (issue 9 item 4: ``--port 70000`` listened on 4464).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from relay import command
from relay.config import Settings, SettingsError, parse_ascii_int

ROOT = Path(__file__).resolve().parents[1]


def run_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.command", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def test_relay_help_lists_serve_send_and_receive() -> None:
    result = run_command("--help")
    assert result.returncode == 0
    for name in ("serve", "send", "receive"):
        assert f"    {name} " in result.stdout


def test_serve_help_lists_every_setting_with_its_environment_variable() -> None:
    result = run_command("serve", "--help")
    assert result.returncode == 0
    for spec in dataclasses.fields(Settings):
        assert "--" + spec.name.replace("_", "-") in result.stdout
        assert "RELAY_" + spec.name.upper() in result.stdout
    assert "--offer-timeout" in result.stdout


def test_other_subcommands_go_to_the_client_command() -> None:
    result = run_command("send", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: relay send")


def bad_values() -> list[tuple[str, str]]:
    """For every flag, values that must be refused: not ASCII digits, too long, out of range, not finite."""
    cases: list[tuple[str, str]] = []
    for spec in dataclasses.fields(Settings):
        flag, low, high = spec.name, spec.metadata.get("min"), spec.metadata.get("max")
        if spec.type in ("int", int):
            cases += [(flag, "٣"), (flag, "²"), (flag, "1" * 5000), (flag, "-1"), (flag, "1.5"), (flag, "12x"),
                      (flag, str(high + 1))]
            if low:
                cases.append((flag, str(low - 1)))
        elif spec.type in ("float", float):
            cases += [(flag, "nan"), (flag, "inf"), (flag, "1e999"), (flag, "-1"), (flag, "٣"), (flag, "1" * 5000),
                      (flag, str(int(high) + 1))]
            if low:
                cases.append((flag, "0"))
        elif flag == "log_level":
            cases += [(flag, "loud"), (flag, "")]
        elif flag == "host":
            cases += [(flag, "a b"), (flag, "evil\x1b[2J"), (flag, "h" * 300)]
        else:
            cases += [(flag, "x\x1b[2J"), (flag, "x" * (high + 1))]
    return cases


@pytest.mark.parametrize("name,value", bad_values())
def test_a_bad_value_of_any_serve_flag_is_one_line_and_exit_2(name: str, value: str, capsys) -> None:
    status = command.main(["serve", "--" + name.replace("_", "-"), value])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("relay: error: ") and err.count("\n") == 1, err
    assert "\x1b" not in err and "Traceback" not in err


def test_port_70000_is_refused_by_the_real_command_without_a_traceback() -> None:
    result = run_command("serve", "--port", "70000")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "relay: error: --port (or RELAY_PORT) must have a value from 1 to 65535, not 70000\n"


def test_a_refused_token_is_never_echoed(capsys) -> None:
    assert command.main(["serve", "--token", "s3cret-" + "x" * 2000]) == 2
    assert "s3cret" not in capsys.readouterr().err


def test_a_bad_environment_variable_is_refused_the_same_way() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "RELAY_IDLE_TIMEOUT": "nan"}
    result = run_command("serve", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("relay: error: --idle-timeout (or RELAY_IDLE_TIMEOUT)")


def test_an_unknown_subcommand_is_usage() -> None:
    result = run_command("serv")
    assert result.returncode == 2 and result.stderr.startswith("relay: error: ")


# --- relay/config.py --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("0", 0), ("8", 8), ("0042", 42), ("123456", 123456), ("1234567", None),
                                           ("", None), ("٣", None), ("²", None), (" 1", None), ("+1", None),
                                           ("1_0", None), ("-1", None), ("1e3", None), ("１", None)])
def test_integers_are_ascii_digits_of_bounded_length(text: str, expected: int | None) -> None:
    assert parse_ascii_int(text, 6) == expected


def test_settings_from_the_environment_are_parsed_and_checked() -> None:
    settings = Settings.from_env({"RELAY_PORT": "9000", "RELAY_OFFER_TIMEOUT": "90.5", "RELAY_LOG_LEVEL": "debug"})
    assert (settings.port, settings.offer_timeout, settings.log_level) == (9000, 90.5, "debug")
    with pytest.raises(SettingsError, match="RELAY_PORT"):
        Settings.from_env({"RELAY_PORT": "0"})


def test_flags_override_the_environment() -> None:
    assert Settings.from_env({"RELAY_PORT": "9000"}, port=9001).port == 9001


def test_the_offer_timeout_defaults_to_half_an_hour() -> None:
    assert Settings().offer_timeout == 1800.0


def test_serve_without_a_built_page_says_how_to_build_it(tmp_path: Path, monkeypatch, capsys) -> None:
    from relay import web

    monkeypatch.setattr(web, "STATIC", tmp_path)
    assert command.main(["serve", "--port", "1"]) == 1  # refused before anything listens
    err = capsys.readouterr().err
    assert err.startswith("relay: error: the web page is not built") and "npm --prefix clients/web" in err
