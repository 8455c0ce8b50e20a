"""Reading files as users have them (issue 14): each layout of the issue's table, dialect
sniffing, missing markers, text vs table, and layout errors that say what to pass."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from streamseq.events.errors import EventError
from streamseq.io import FileLayout, LayoutError, RowErrors, expand_paths, read_events
from streamseq.io.sniff import content_kind, sniff_dialect
from streamseq.text.backtest import is_text_input

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "files"


def _ms(text: str, fmt: str) -> int:
    return round(dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
                 .timestamp() * 1000)


def _read(name: str, **layout: object) -> tuple[list, RowErrors]:
    errors = RowErrors()
    given = FileLayout(**layout)  # type: ignore[arg-type]
    events = list(read_events([FIXTURES / name], given, errors))
    return events, errors


# -- the table, one row each -------------------------------------------------------
def test_month_day_year_unpadded() -> None:
    events, errors = _read("mdy_unpadded.csv")
    assert errors.total == 0 and len(events) == 6
    assert events[0].ts_ms == _ms("2010-01-12 22:00", "%Y-%m-%d %H:%M")
    assert events[2].ts_ms == _ms("2010-01-13 00:00", "%Y-%m-%d %H:%M")
    assert events[0].values == {"Load": 10.5, "Temp": 3.0}


def test_year_first_with_slashes() -> None:
    events, errors = _read("ymd_slash.csv")
    assert errors.total == 0 and len(events) == 6
    assert [e.ts_ms for e in events] == [_ms(f"1990-01-01 0{h}", "%Y-%m-%d %H")
                                         for h in range(6)]


def test_a_date_column_and_a_clock_column(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="streamseq.io"):
        events, errors = _read("date_time_columns.csv")
    assert errors.total == 0 and len(events) == 6
    assert events[0].ts_ms == _ms("2004-12-31 22:00", "%Y-%m-%d %H:%M")
    assert events[2].ts_ms == _ms("2005-01-01 00:00", "%Y-%m-%d %H:%M")
    assert set(events[0].values) == {"T", "RH"}
    assert "time from 'Date+Time'" in caplog.text  # the choice is logged
    same, _ = _read("date_time_columns.csv", time_col="Date+Time")
    also, _ = _read("date_time_columns.csv", date_col="Date", time_col="Time")
    assert [e.ts_ms for e in same] == [e.ts_ms for e in also] == [e.ts_ms for e in events]


def test_semicolon_delimiter() -> None:
    events, errors = _read("semicolon.csv")
    assert errors.total == 0 and len(events) == 6
    assert list(events[0].values) == ["Accelerometer1RMS", "Current", "Pressure", "anomaly"]
    assert events[1].ts_ms - events[0].ts_ms == 1000


def test_time_column_with_another_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="streamseq.io"):
        events, errors = _read("reconstructed.csv")
    assert errors.total == 0 and len(events) == 6
    assert events[0].ts_ms == _ms("2021-06-01 08:00", "%Y-%m-%d %H:%M")
    assert "'timestamp_reconstructed' (by its name" in caplog.text


def test_no_header_semicolon_compact_times() -> None:
    events, errors = _read("histdata_noheader.csv")
    assert errors.total == 0 and len(events) == 6
    assert events[0].ts_ms == _ms("2011-03-01 09:01", "%Y-%m-%d %H:%M")
    assert list(events[0].values) == ["col2", "col3", "col4", "col5", "col6"]
    named, _ = _read("histdata_noheader.csv", header=False,
                     columns=("time", "open", "high", "low", "close", "volume"))
    assert list(named[0].values) == ["open", "high", "low", "close", "volume"]
    assert named[0].values["close"] == 1.3804


def test_sentinel_for_missing_readings() -> None:
    raw, _ = _read("sentinel.csv")
    assert [e.values["value"] for e in raw][:2] == [73.0, -200.0]  # a sentinel is a value...
    events, errors = _read("sentinel.csv", na_values=((None, "-200"),))
    assert len(events) == 5 and dict(errors.counts) == {"no_values": 2}  # ...unless named
    assert -200.0 not in [e.values["value"] for e in events]
    per_column, _ = _read("sentinel.csv", na_values=(("value", "-200.0"),))
    assert [e.ts_ms for e in per_column] == [e.ts_ms for e in events]


def test_a_table_saved_as_txt_is_a_table() -> None:
    path = FIXTURES / "table_saved_as.txt"
    assert content_kind(path) == "table" and not is_text_input([path])
    events, errors = _read("table_saved_as.txt")
    assert errors.total == 0 and len(events) == 6


# -- other layouts people have -------------------------------------------------------------
def test_european_layout_with_per_column_sentinel() -> None:
    """``;``, decimal comma, day-first dates, ``18.00.00`` clocks, trailing ``;;``, a blank
    row (the UCI air-quality layout)."""
    events, errors = _read("sentinel_semicolon.csv", na_values=(("CO(GT)", "-200"),))
    assert errors.total == 0 and len(events) == 6
    assert events[0].values == {"CO(GT)": 2.6, "PT08.S1(CO)": 1360.0, "T": 13.6, "RH": 48.9}
    assert events[2].values["CO(GT)"] is None
    assert events[4].values["PT08.S1(CO)"] == -200.0  # the marker was for CO(GT) only
    assert events[5].ts_ms == _ms("2004-03-13 23:00", "%Y-%m-%d %H:%M")


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_each_delimiter(tmp_path: Path, delimiter: str) -> None:
    rows = ["when", "x", "y"], ["2024-01-01 00:00", "1.5", "2"], ["2024-01-01 00:01", "", "3"]
    path = tmp_path / "d.dat"
    path.write_text("\n".join(delimiter.join(r) for r in rows) + "\n")
    assert sniff_dialect(path.read_text().splitlines()).delimiter == delimiter
    events = list(read_events([path]))
    assert [e.values for e in events] == [{"x": 1.5, "y": 2.0}, {"x": None, "y": 3.0}]


def test_time_found_by_its_values_and_epoch_only_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("stamp,v\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,2\n")
    (tmp_path / "b.csv").write_text("ts,v\n1704067200000,1\n1704067260000,2\n")
    (tmp_path / "c.csv").write_text("when,v\n1704067200,1\n1704067260,2\n")
    assert [e.ts_ms for e in read_events([tmp_path / "a.csv"])] == [1704067200000,
                                                                    1704067260000]
    assert [e.ts_ms for e in read_events([tmp_path / "b.csv"])] == [1704067200000,
                                                                    1704067260000]
    with pytest.raises(LayoutError, match="no time column"):
        read_events([tmp_path / "c.csv"])  # 'when' holds plain numbers: not guessed
    assert [e.ts_ms for e in read_events([tmp_path / "c.csv"], FileLayout(time_col="when"))
            ] == [1704067200000, 1704067260000]


def test_month_day_order_decided_beyond_the_sample(tmp_path: Path) -> None:
    """The first 1,152 rows (Jan 1..12, every 15 minutes: more than the sample) fit both
    orders; a later row decides, and every row is read in the order it decided."""
    start = dt.datetime(2010, 1, 1)
    lines = ["Datetime,Load"]
    stamps = [start + dt.timedelta(minutes=15 * i) for i in range(1300)]  # to Jan 14
    lines += [f"{t.month}/{t.day}/{t.year} {t.hour}:{t.minute:02d},{i}"
              for i, t in enumerate(stamps)]
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    events = list(read_events([path]))
    assert len(events) == 1300
    assert [e.ts_ms for e in events] == [round(t.replace(tzinfo=dt.timezone.utc).timestamp()
                                               * 1000) for t in stamps]


def test_year_month_day_hour_columns(tmp_path: Path) -> None:
    path = tmp_path / "air.csv"
    path.write_text("No,year,month,day,hour,PM2.5,station\n1,2013,3,1,0,4,A\n2,2013,3,1,1,NA,A\n"
                    "3,2013,3,1,2,6,A\n")
    events, errors = list(read_events([path])), None
    assert errors is None and [e.values["PM2.5"] for e in events] == [4.0, 6.0]
    assert events[0].key == "A" and events[0].ts_ms == _ms("2013-03-01", "%Y-%m-%d")


def test_cells_missing_non_numeric_and_non_finite(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text("time,x,y\n2024-01-01 00:00,1.5,NA\n2024-01-01 00:01,abc,1\n"
                    "2024-01-01 00:02,inf,1\n2024-01-01 00:03,nan,?\n,1,1\n"
                    "2024-01-01 00:05,1e999,1\n2024-01-01 00:06,,2\n\n,,\n")
    errors = RowErrors()
    events = list(read_events([path], FileLayout(value_cols=("x", "y")), errors))
    assert [e.values for e in events] == [{"x": 1.5, "y": None}, {"x": None, "y": 2.0}]
    assert dict(errors.counts) == {"non_numeric": 1, "non_finite": 2, "no_values": 1,
                                   "missing_time": 1}
    assert errors.examples[0].startswith("cells.csv:3: non_numeric")


def test_keys_follow_the_one_key_rule(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    path.write_text('key,time,v\na,2024-01-01 00:00,1\n"b\x1bc",2024-01-01 00:01,2\n'
                    '\u6e29,2024-01-01 00:02,3\n,2024-01-01 00:03,4\n')
    errors = RowErrors()
    assert [e.key for e in read_events([path], errors=errors)] == ["a", "\u6e29"]
    assert dict(errors.counts) == {"bad_key": 2}
    assert "control character U+001B" in errors.examples[0]


def test_folders_take_tables_by_content(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("These readings come from a sensor on the roof.\n"
                                         "Ask the caretaker before climbing up there.\n")
    (tmp_path / "log.txt").write_text("time,v\n2024-01-01 00:00,1\n2024-01-01 00:01,2\n")
    (tmp_path / "notes.md").write_text("time,v\n")
    assert [p.name for p in expand_paths([tmp_path])] == ["log.txt"]
    assert not is_text_input([tmp_path])


def test_text_layouts_stay_text(tmp_path: Path) -> None:
    labelled = tmp_path / "reviews.txt"
    labelled.write_text("A very good film, I liked it.\t1\nNot worth the ticket at all.\t0\n")
    prose = tmp_path / "play.txt"
    prose.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n"
                     "Speak, speak.\n")
    assert content_kind(labelled) == content_kind(prose) == "text"
    assert is_text_input([labelled, prose])
    with pytest.raises(LayoutError, match="holds text"):
        read_events([prose])


# -- errors that say what to pass ----------------------------------------------------------
@pytest.mark.parametrize("content, layout, message", [
    ("Datetime,v\n1/2/2010 0:00,1\n2/3/2010 0:00,2\n", {},
     "read as '%m/%d/%Y %H:%M' or '%d/%m/%Y %H:%M' and no value in the file decides"),
    ("time,v\n3,1\n4,2\n", {}, "column 'time' does not hold times in a known format (e.g. '3')"
     "; pass --time-format"),
    ("time,v\n2024-01-01 00:00,1\noops,2\n", {}, "but also 'oops', which no format reads; "
     "pass --time-format '%Y-%m-%d %H:%M'"),
    ("a,b\nx,1\ny,2\n", {}, "no time column found (columns: a, b); pass --time-col"),
    ("time,v\n2024-01-01,1\n", {"time_col": "when"}, "no column 'when' (columns: time, v)"),
    ("time,v\n2024-01-01,1\n", {"time_format": "%d.%m.%Y"},
     "--time-format '%d.%m.%Y' reads none of the times of column 'time' (e.g. '2024-01-01')"),
    ("time,v\n10:00,1\n", {"time_col": "time"}, "holds times of day only"),
    ("time,v\n2024-01-01,a\n", {}, "no numeric value column found"),
    ("time,v\n2024-01-01,1\n", {"na_values": (("w", "1"),)}, "--na-values names column 'w'"),
])
def test_layout_errors_name_the_column_a_sample_and_the_flag(
        tmp_path: Path, content: str, layout: dict[str, object], message: str) -> None:
    path = tmp_path / "f.csv"
    path.write_text(content)
    with pytest.raises(LayoutError) as info:
        read_events([path], FileLayout(**layout))  # type: ignore[arg-type]
    assert message in str(info.value) and str(info.value).startswith("f.csv: ")


def test_event_error_reasons_are_known() -> None:
    with pytest.raises(ValueError):
        EventError("no_such_reason")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252"])
def test_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "enc.csv"
    path.write_text("time;Temp (°C)\n2024-01-01 00:00;1,5\n2024-01-01 00:01;2,0\n",
                    encoding=encoding)
    assert [e.values for e in read_events([path])] == [{"Temp (°C)": 1.5}, {"Temp (°C)": 2.0}]
