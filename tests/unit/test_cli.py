"""The command line on files as users have them (issue 14): each layout of the issue's table
runs with at most the documented flags, and every error is one line with a documented exit
code (2 usage, 1 data), never a traceback, never a report of nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamseq.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "files"
FAST = ["--no-progress", "--hidden", "4", "--k1", "1", "--k2", "2", "--batch-windows", "1"]


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ": error: " in ln]


@pytest.mark.parametrize("name, flags, rows", [
    ("mdy_unpadded.csv", [], 6),
    ("ymd_slash.csv", [], 6),
    ("date_time_columns.csv", [], 6),
    ("semicolon.csv", [], 6),
    ("reconstructed.csv", [], 6),
    ("histdata_noheader.csv", ["--no-header", "--columns", "time,open,high,low,close,volume",
                               "--target", "close"], 6),
    ("sentinel.csv", ["--na-values=-200"], 5),
    ("table_saved_as.txt", [], 6),
])
def test_backtest_reads_each_layout_of_the_issue(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, flags: list[str],
        rows: int) -> None:
    report = tmp_path / "r.json"
    code = main(["backtest", str(FIXTURES / name), "--report-json", str(report), *flags, *FAST])
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads(report.read_text())
    assert r["overall"]["events"] == rows  # every valid row is applied
    assert r["overall"]["scored"] > 0 and r["overall"]["model"]["mae"] is not None
    assert "OVERALL" in out.out and "bits per char" not in out.out.lower()


def test_replay_uses_the_same_reader_and_options(capsysbinary: pytest.CaptureFixture[bytes],
                                                 ) -> None:
    code = main(["replay", str(FIXTURES / "histdata_noheader.csv"), "--columns",
                 "time,open,high,low,close,volume", "--target", "close", "--dry-run"])
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert code == 0 and len(out) == 6
    first = json.loads(out[0])
    assert first["kind"] == "price" and first["close"] == 1.3804  # a 'close' column: prices
    assert first["ts"] == 1298970060000 and "open" not in first
    code = main(["replay", str(FIXTURES / "sentinel.csv"), "--na-values", "value=-200",
                 "--dry-run"])
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert code == 0 and len(out) == 5


AMBIGUOUS = "Datetime,v\n1/2/2010 0:00,1\n2/3/2010 0:00,2\n"


@pytest.mark.parametrize("argv, code, message", [
    (["backtest", "{dir}/nope.csv"], 2, "no such file or folder"),
    (["backtest", "{amb}"], 1, "pass --time-format '%m/%d/%Y %H:%M' or '%d/%m/%Y %H:%M'"),
    (["backtest", "{amb}", "--tz", "Mars/Olympus"], 2, "unknown time zone 'Mars/Olympus'"),
    (["backtest", "{amb}", "--time-format", "%Q"], 2, "directive %Q is not supported"),
    (["backtest", "{amb}", "--delimiter", "::"], 2, "--delimiter '::'"),
    (["backtest", "{amb}", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["backtest"], 2, "the following arguments are required: INPUT"),
    (["backtest", "{amb}", "--time-col", "when"], 1, "no column 'when'"),
    (["replay", "{dir}/nope.csv", "--dry-run"], 2, "no such file or folder"),
    (["replay", "{amb}", "--dry-run"], 1, "no value in the file decides"),
    (["replay", "{amb}", "--dry-run", "--time-format", "%d/%m/%Y %H:%M",
      "--limit", "0"], 2, "--limit must be at least 1"),
    (["simulate", "sensors", "--rate", "-1", "--dry-run"], 2, "argument --rate"),
    (["simulate", "prices", "--session", "x", "--dry-run"], 2, "argument --session"),
    (["broker", "--port", "abc"], 2, "argument --port"),
    (["top", "--interval", "0"], 2, "--interval must be positive"),
])
def test_errors_are_one_line_with_a_documented_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
        message: str) -> None:
    amb = tmp_path / "amb.csv"
    amb.write_text(AMBIGUOUS)
    argv = [a.format(dir=tmp_path, amb=amb) for a in argv]
    assert main([*argv, *(["--no-progress"] if argv[0] == "backtest" else [])]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("streamseq")


def test_a_run_that_applies_nothing_fails_and_writes_no_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("time,v\n2024-01-01 00:00,a\n2024-01-01 00:01,b\n")
    report = tmp_path / "r.json"
    code = main(["backtest", str(path), "--target", "v", "--report-json", str(report), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and not report.exists()
    (line,) = _error_lines(err)
    assert "no event applied: 2 rows skipped (non_numeric 2); first: bad.csv:2: non_numeric" \
        in line
    code = main(["replay", str(path), "--target", "v", "--dry-run"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == 1 and "no event to replay: 2 rows skipped (non_numeric 2)" in line


def test_a_run_that_scores_nothing_fails(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    code = main(["backtest", str(FIXTURES / "ymd_slash.csv"), "--warmup-rows", "10",
                 "--report-json", str(report), *FAST])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == 1 and not report.exists()
    assert "no event to score" in line and "--warmup-rows 10" in line


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import streamseq.backtest

    def broken(_args: object) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(streamseq.backtest, "run_backtest", broken)
    assert main(["backtest", str(FIXTURES / "ymd_slash.csv")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("streamseq backtest: error: internal error, please report it: "
                           "RuntimeError: boom second line (--log-level DEBUG shows the "
                           "traceback)")


def test_stderr_of_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    amb = tmp_path / "amb.csv"
    amb.write_text(AMBIGUOUS)
    proc = subprocess.run([sys.executable, "-m", "streamseq", "replay", str(amb), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(_error_lines(proc.stderr)) == 1


def test_the_readme_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The two flagged examples of the README's backtest section, on fixtures of the same
    layouts (HistData minutes; UCI air quality)."""
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Backtest from files"):readme.index("### The service")]
    block = section.split("```bash")[2].split("```")[0].replace("\\\n", " ")
    commands = [shlex.split(ln) for ln in block.splitlines()
                if ln.strip().startswith("streamseq backtest")]
    assert len(commands) == 2
    files = {"EURUSD_M1_2011.csv": FIXTURES / "histdata_noheader.csv",
             "AirQualityUCI.csv": FIXTURES / "sentinel_semicolon.csv"}
    for argv in commands:
        argv = [str(files.get(a, a)) for a in argv[1:]]
        report = tmp_path / "r.json"
        assert main([*argv, "--report-json", str(report), *FAST]) == 0, capsys.readouterr().err
        assert json.loads(report.read_text())["overall"]["events"] == 6


@pytest.mark.parametrize("argv, code", [
    (["run"], 2),  # no broker configured
    (["generate", "--checkpoint", "{dir}/nope.ckpt"], 1),
    (["backtest-text", "{dir}/nope.bin"], 2),  # no such file: usage, as every command
])
def test_other_commands_fail_on_one_line_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, argv: list[str], code: int) -> None:
    for name in [k for k in os.environ if k.startswith("STREAMSEQ_")]:
        monkeypatch.delenv(name)
    with caplog.at_level(logging.ERROR):
        assert main([a.format(dir=tmp_path) for a in argv]) == code
    printed = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    lines = printed + logged  # commands print their error line or log it (one record)
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "Traceback" not in lines[0]


@pytest.mark.parametrize("case, message", [
    ("bootstrap_not_a_number", "bootstrap '127.0.0.1:abc': port 'abc' is not a number"),
    ("bootstrap_out_of_range", "bootstrap '127.0.0.1:99999': port 99999 is out of range"),
    ("checkpoint_dir_is_a_file", "is a file, not a directory"),
    ("checkpoint_dir_under_a_file", "is under a file"),
    ("metrics_port_in_use", "cannot be used (Address already in use)"),
])
def test_run_refuses_unusable_settings_on_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        case: str, message: str) -> None:
    """Start-up failures of `streamseq run` (issue 15 point 6): one line, exit code 2, before
    any broker is contacted (the bootstrap address accepts no connection)."""
    import socket

    import streamseq.service.commands as commands

    for name in [k for k in os.environ if k.startswith("STREAMSEQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(commands, "install_signal_handlers", lambda stop: None)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    settings = {"bootstrap": "127.0.0.1:9", "checkpoint-dir": str(tmp_path / "ckpt"),
                "metrics-port": "0"}
    settings.update({
        "bootstrap_not_a_number": {"bootstrap": "127.0.0.1:abc"},
        "bootstrap_out_of_range": {"bootstrap": "127.0.0.1:99999"},
        "checkpoint_dir_is_a_file": {"checkpoint-dir": str(a_file)},
        "checkpoint_dir_under_a_file": {"checkpoint-dir": str(a_file / "sub")},
        "metrics_port_in_use": {"metrics-port": str(busy.getsockname()[1])},
    }[case])
    argv = ["--log-level", "ERROR", "run", "--sensor-topic", "sensors"]
    for flag, value in settings.items():
        argv += [f"--{flag}", value]
    try:
        assert main(argv) == 2
    finally:
        busy.close()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("streamseq run: configuration error: ")


@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_a_float_setting_refuses_nan_wherever_it_comes_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        source: str) -> None:
    """NaN passes every ``x > 0`` check a setting makes (a NaN checkpoint interval never
    fell due): a float setting must be a finite number, from a flag, the environment or the
    file; exit 2 with one line, before any broker is contacted."""
    for name in [k for k in os.environ if k.startswith("STREAMSEQ_")]:
        monkeypatch.delenv(name)
    argv = ["--log-level", "ERROR", "run", "--bootstrap", "127.0.0.1:9",
            "--sensor-topic", "sensors", "--metrics-port", "0"]
    if source == "flag":
        argv += ["--checkpoint-every-seconds", "nan"]
        message = "invalid float value: 'nan'"
    elif source == "environment":
        monkeypatch.setenv("STREAMSEQ_ENGINE_LEARNER_LR", "nan")
        message = "must be a finite number, not nan"
    else:
        (tmp_path / "c.toml").write_text("checkpoint_every_seconds = inf\n")
        argv += ["--config", str(tmp_path / "c.toml")]
        message = "checkpoint_every_seconds: must be a finite number, not inf"
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], lines
