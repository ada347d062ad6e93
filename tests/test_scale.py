"""Millions of rows (issue 13), checked structurally, never by time or bytes: a run holds
a bounded number of rows, and a rerun builds bodies only for rows that changed."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from importer._options import DEFAULTS, RunOptions
from importer._rows import Row
from importer.engine import _engine as engine_module
from importer.engine._observer import RunObserver
from importer.engine._runner import RunConfig, run_import
from importer.intake import _normalize as normalize
from importer.intake import _reader as reader
from importer.intake._mapping import load_mapping
from importer.sandbox import RunningSandbox
from tests.engine_helpers import KEY, consent_rows, run, write_csv

EDITS: dict[str, Any] = {
    "nothing": lambda rows: rows,
    "one status": lambda rows: [{**rows[0], "status": "inactive"}, *rows[1:]],
    "one new row": lambda rows: [*rows, *consent_rows(1, start=len(rows))],
    "one row gone": lambda rows: rows[1:],
    "a row repeated": lambda rows: [*rows, rows[0]],
}


@pytest.mark.parametrize(
    ("edit", "built", "requests", "unchanged"),
    [
        ("nothing", 0, 0, 60),
        ("one status", 1, 1, 59),  # the edited row's body, for its PATCH
        ("one new row", 1, 1, 60),
        ("one row gone", 0, 0, 59),  # noted missing, nothing sent
        ("a row repeated", 1, 0, 60),  # the repeat is built, to report it as duplicate_row
    ],
)
def test_a_rerun_builds_bodies_only_for_rows_that_changed(
    tmp_path: Path,
    server: RunningSandbox,
    bodies: list[int],
    edit: str,
    built: int,
    requests: int,
    unchanged: int,
) -> None:
    rows = list(consent_rows(60))
    ledger = tmp_path / "l.db"
    source = tmp_path / "export.csv"  # the same file each night (the revocation scope)
    run(write_csv(source, rows), server.base_url, ledger)
    assert bodies[0] == 60
    bodies[0] = 0
    result = run(write_csv(source, EDITS[edit](rows)), server.base_url, ledger)
    assert bodies[0] == built
    assert (result.stats.requests, result.stats.unchanged) == (requests, unchanged)
    assert result.stats.missing_from_source == (edit == "one row gone")
    assert result.stats.invalid == (edit == "a row repeated")
    assert result.validation.valid == result.stats.rows - result.stats.invalid


def test_an_edited_mapping_compares_bodies_again(
    tmp_path: Path, server: RunningSandbox, bodies: list[int]
) -> None:
    """Same cells, another mapping: the digests miss and the bodies decide (here the new
    mapping makes the same bodies: unchanged, nothing sent)."""
    source = write_csv(tmp_path / "a.csv", consent_rows(20))
    ledger = tmp_path / "l.db"
    run(source, server.base_url, ledger)
    mapping = tmp_path / "m.toml"
    mapping.write_text(
        '[values.status]\nenabled = "active"\nunmapped = "keep"\n', encoding="utf-8"
    )  # the file's own statuses pass as they are
    bodies[0] = 0
    result = run(source, server.base_url, ledger, mapping=mapping)
    assert bodies[0] == 20
    assert (result.stats.unchanged, result.stats.requests) == (20, 0)
    bodies[0] = 0
    run(source, server.base_url, ledger, mapping=mapping)  # digests stored: bulk again
    assert bodies[0] == 0


def test_work_is_released_once_its_outcome_is_recorded(
    tmp_path: Path, server: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    alive = [0]
    peak = [0]

    class Counted(engine_module.Work):
        def __post_init__(self) -> None:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(self, lambda: alive.__setitem__(0, alive[0] - 1))

    monkeypatch.setattr(engine_module, "Work", Counted)
    concurrency = 4
    result = run(
        write_csv(tmp_path / "a.csv", consent_rows(1200)),
        server.base_url,
        tmp_path / "l.db",
        concurrency=concurrency,
    )
    gc.collect()
    assert result.stats.created == 1200
    assert alive[0] == 0
    # At most a planned batch, the queue to the workers and one per worker.
    assert peak[0] <= engine_module._BATCH + 4 * concurrency


def sample_live_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Slices of 100 rows; every 250th row read, the number of `Row`s alive (after
    collecting garbage: rows held, not what the reader's paused collector left)."""
    monkeypatch.setattr(normalize, "_SLICE", 100)
    samples: list[int] = []
    read = RunObserver.read

    def sampled(self: RunObserver, row: Row) -> None:
        if self.stats.rows % 250 == 0:
            gc.collect()
            samples.append(sum(isinstance(o, Row) for o in gc.get_objects()))
        read(self, row)

    monkeypatch.setattr(RunObserver, "read", sampled)
    return samples


def test_a_run_holds_a_slice_of_rows_not_the_file(
    tmp_path: Path, server: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows (with their models) alive at once, sampled as rows are read: a slice of the
    input and the rows planned, however big the file's chunk."""
    samples = sample_live_rows(monkeypatch)
    # No first-run check: its sample of rows is kept apart (importer.engine._preflight).
    result = run(
        write_csv(tmp_path / "a.csv", consent_rows(1500)),
        server.base_url,
        tmp_path / "l.db",
        preflight=False,
    )
    assert result.stats.created == 1500
    assert len(samples) == 6
    # The slice being built and the batch being read (or, instead, a batch waiting to be
    # handed over), the one read ahead, the one being planned, and the rows held by work
    # queued, in workers and in outcomes not yet committed: a bound of its own, whatever
    # the file's size (all 1,500 rows were alive at once before).
    concurrency = DEFAULTS.concurrency
    assert max(samples) <= 100 + 3 * engine_module._BATCH + 8 * concurrency


def test_a_file_without_a_key_column_reruns_in_bulk_too(
    tmp_path: Path, server: RunningSandbox, bodies: list[int]
) -> None:
    """Natural keys (patient, scope, categories, date) are made a column at a time."""
    rows = [{k: v for k, v in row.items() if k != "sourceKey"} for row in consent_rows(30)]
    source, ledger = write_csv(tmp_path / "export.csv", rows), tmp_path / "l.db"
    run(source, server.base_url, ledger)
    bodies[0] = 0
    result = run(source, server.base_url, ledger)
    assert bodies[0] == 0
    assert (result.stats.unchanged, result.stats.requests) == (30, 0)


@pytest.mark.parametrize("slice_size", [1, 7, 100, 1000])
def test_the_key_index_finds_the_same_repeats_whatever_the_slices(
    monkeypatch: pytest.MonkeyPatch, slice_size: int
) -> None:
    """Added a slice at a time (sorted runs, merged now and then), the index answers
    as one batch does: where each repeated key was first seen."""
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 300, size=1000).astype(np.uint64)
    here = np.arange(1000, dtype=np.int64) + 10
    whole = normalize.KeyIndex().add(keys, here)
    index = normalize.KeyIndex()
    sliced = np.concatenate(
        [
            index.add(keys[i : i + slice_size], here[i : i + slice_size])
            for i in range(0, 1000, slice_size)
        ]
    )
    assert sliced.tolist() == whole.tolist()
    assert index.contains(keys).all()
    assert not index.contains(np.array([1000, 2000], dtype=np.uint64)).any()


def test_rows_gone_are_all_found_from_the_key_index(tmp_path: Path, server: RunningSandbox) -> None:
    """600 of 700 rows gone: found by the input's key index, fetched 500 at a time."""
    source, ledger = tmp_path / "export.csv", tmp_path / "l.db"
    rows = list(consent_rows(700))
    run(write_csv(source, rows), server.base_url, ledger, concurrency=16)
    result = run(write_csv(source, rows[:100]), server.base_url, ledger)
    assert (result.stats.unchanged, result.stats.missing_from_source) == (100, 600)


# Version-2 mappings: several consents a row, a nested provision; a row's consents share
# its cells digest, each has its own key.
V2_MAPPING = """
[source]
key = ["ID"]

[columns]
patientId = "Patient"

[[consents]]
key = "research"
fields = { scope = { value = "research" }, category = { value = "research-participation" }, \
status = "Research Status", "provision.provision[0].type" = "Type" }

[[consents]]
key = "hipaa"
when = { column = "HIPAA Date", not_empty = true }
fields = { scope = { value = "patient-privacy" }, category = { value = "hipaa-notice" }, \
dateTime = "HIPAA Date", status = "HIPAA Status" }
"""


def v2_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """Even rows make two consents (research and hipaa), odd rows one (research)."""
    return [
        {
            "ID": f"R{i:05d}",
            "Patient": f"pt_{i:04d}",
            "Research Status": "active",
            "Type": "deny" if i % 3 else "permit",
            "HIPAA Date": f"2024-05-{1 + i % 28:02d}" if i % 2 == 0 else "",
            "HIPAA Status": "active",
        }
        for i in range(start, start + n)
    ]


V2_EDITS: dict[str, Any] = {
    "nothing": lambda rows: rows,
    "one consent's status": lambda rows: [{**rows[0], "HIPAA Status": "inactive"}, *rows[1:]],
    "a nested provision": lambda rows: [*rows[:3], {**rows[3], "Type": "deny"}, *rows[4:]],
    "one new row": lambda rows: [*rows, *v2_rows(1, start=len(rows))],
    "one row gone": lambda rows: [rows[0], *rows[2:]],
    "a row repeated": lambda rows: [*rows, rows[1]],
}


@pytest.mark.parametrize(
    ("edit", "built", "requests", "unchanged", "missing", "invalid"),
    [
        ("nothing", 0, 0, 60, 0, 0),
        # Both consents of the edited row are built (they share its digest); one PATCH.
        ("one consent's status", 2, 1, 59, 0, 0),
        ("a nested provision", 1, 1, 59, 0, 0),  # row 3 makes one consent
        ("one new row", 2, 2, 60, 0, 0),  # row 40 makes two
        ("one row gone", 0, 0, 59, 1, 0),  # row 1 made one: noted missing, nothing sent
        ("a row repeated", 1, 0, 60, 0, 1),  # built, to report it as duplicate_row
    ],
)
def test_a_v2_rerun_builds_bodies_only_for_consents_that_changed(
    tmp_path: Path,
    server: RunningSandbox,
    bodies: list[int],
    edit: str,
    built: int,
    requests: int,
    unchanged: int,
    missing: int,
    invalid: int,
) -> None:
    rows = v2_rows(40)  # 60 consents
    mapping = tmp_path / "m.toml"
    mapping.write_text(V2_MAPPING, encoding="utf-8")
    ledger, source = tmp_path / "l.db", tmp_path / "export.csv"
    first = run(write_csv(source, rows), server.base_url, ledger, mapping=mapping)
    assert (first.stats.created, bodies[0]) == (60, 60)
    bodies[0] = 0
    result = run(write_csv(source, V2_EDITS[edit](rows)), server.base_url, ledger, mapping=mapping)
    assert bodies[0] == built
    assert (result.stats.requests, result.stats.unchanged) == (requests, unchanged)
    assert (result.stats.missing_from_source, result.stats.invalid) == (missing, invalid)
    assert result.stats.failed == 0
    assert server.stats()["duplicates"] == 0


def test_a_v2_run_holds_a_slice_of_rows_not_the_file(
    tmp_path: Path, server: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for version 1: a slice of rows' consents alive, not the chunk's (all 2,250
    consents of the 1,500 rows were alive at once before)."""
    samples = sample_live_rows(monkeypatch)
    mapping = tmp_path / "m.toml"
    mapping.write_text(V2_MAPPING, encoding="utf-8")
    result = run(
        write_csv(tmp_path / "a.csv", v2_rows(1500)),
        server.base_url,
        tmp_path / "l.db",
        mapping=mapping,
        preflight=False,
    )
    assert result.stats.created == 2250
    assert len(samples) == 9
    concurrency = DEFAULTS.concurrency
    assert max(samples) <= 2 * 100 + 3 * engine_module._BATCH + 8 * concurrency


def test_a_date_read_another_way_is_not_taken_as_unchanged(
    tmp_path: Path, server: RunningSandbox
) -> None:
    """Row A's cells are the same, but an edit of row B makes its date column read
    month-first: A's date (so its body) changed, and its digest must miss."""
    mapping = tmp_path / "m.toml"
    mapping.write_text('[source]\ndate_formats = ["%d/%m/%Y", "%m/%d/%Y"]\n', encoding="utf-8")
    a, b = consent_rows(2)
    source, ledger = tmp_path / "export.csv", tmp_path / "l.db"
    rows = [{**a, "dateTime": "05/06/2024"}, {**b, "dateTime": "13/06/2024"}]
    assert run(write_csv(source, rows), server.base_url, ledger, mapping=mapping).stats.created == 2
    rows[1]["dateTime"] = "06/13/2024"  # now only month-first reads every cell
    result = run(write_csv(source, rows), server.base_url, ledger, mapping=mapping)
    # B reads as the same day (13 June) and is unchanged; A is now 6 May, not 5 June:
    # a dateTime edit, which the API cannot patch.
    assert result.stats.unchanged == 1
    assert result.stats.by_error == {"immutable_change": 1}


@pytest.mark.parametrize(
    ("count_first", "paused", "counts", "told"),
    [
        (True, False, 1, [30]),  # a progress bar: counted before the run
        (False, False, 0, []),  # no bar (a nightly job): the rows read are the total
        (False, True, 1, [30]),  # a budget pause: counted after it, for the rows left
    ],
)
def test_the_input_is_counted_beforehand_only_for_a_progress_bar(
    tmp_path: Path,
    server: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
    count_first: bool,
    paused: bool,
    counts: int,
    told: list[int],
) -> None:
    calls = [0]
    count_rows = reader._CsvTable.count_rows

    def counted(self: reader._CsvTable) -> int:
        calls[0] += 1
        return count_rows(self)

    monkeypatch.setattr(reader._CsvTable, "count_rows", counted)
    if paused:
        server.configure(rate_limit=10, rate_window_s=60)
    options = RunOptions(
        ledger=tmp_path / "l.db",
        base_url=server.base_url,
        preflight=False,
        settle_s=0.0,
        max_wait_s=0.5 if paused else None,
    )
    totals: list[int] = []
    result = run_import(
        RunConfig([write_csv(tmp_path / "a.csv", consent_rows(30))], options, KEY, False),
        load_mapping(None),
        on_total=totals.append,
        count_first=count_first,
    )
    assert (calls[0], totals, result.total, result.stats.paused) == (counts, told, 30, paused)
    assert result.stats.rows_left == 30 - result.stats.finished
    assert (result.stats.rows_left > 0) == paused
