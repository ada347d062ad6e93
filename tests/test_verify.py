"""`consent-import verify` against the sandbox over real sockets: a clean import agrees;
a consent deleted, patched or posted behind the importer's back is reported; verify only
reads, and picks a search per patient or a GET per consent by cost."""

from __future__ import annotations

import csv
import hashlib
import json
import stat
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from importer.commands._verify import (
    VerifyConfig,
    differing_fields,
    plan_reads,
    same_identity,
    verify,
)
from importer.ledger._ledger import Ledger
from importer.ledger._lock import LedgerLock
from importer.ledger._schema import DoneConsent, ErrorNote, Op, Source
from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, ledger_ids, run, write_csv

ROWS = 12  # one consent per patient (pt_0000 … pt_0011)
API = {"x-api-key": KEY}


pytestmark = pytest.mark.usefixtures("instant_backoff")


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def imported(tmp_path: Path, sandbox: RunningSandbox) -> Path:
    """A clean import of ROWS rows into the sandbox; returns the ledger."""
    source = write_csv(tmp_path / "in.csv", consent_rows(ROWS))
    ledger = tmp_path / "l.db"
    assert run(source, sandbox.base_url, ledger).exit_code == 0
    return ledger


def cli(
    ledger: Path, sb: RunningSandbox, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run `consent-import verify` on the ledger; (exit code, stdout + stderr)."""
    argv = ["verify", "--ledger", str(ledger), "--base-url", sb.base_url, "--api-key", KEY]
    code, out, err = run_cli([*argv, *args], capsys)
    return code, out + err


def row_of(ledger: Path, key: str) -> tuple[int, str]:
    """(source row, consent id) of a source key."""
    return ROW_NUMBERS[key], ledger_ids(ledger)[key]


# consent_rows(n) writes K000000 … on lines 2 … (line 1 is the header).
ROW_NUMBERS = {f"K{i:06d}": i + 2 for i in range(ROWS)}


def tamper_delete(sb: RunningSandbox, consent_id: str, body: dict[str, str]) -> None:
    assert httpx.delete(f"{sb.base_url}/v1/consents/{consent_id}", headers=API).status_code == 200


def tamper_patch(sb: RunningSandbox, consent_id: str, body: dict[str, str]) -> None:
    url = f"{sb.base_url}/v1/consents/{consent_id}"
    assert httpx.patch(url, json={"status": "inactive"}, headers=API).status_code == 200


def tamper_post(sb: RunningSandbox, consent_id: str, body: dict[str, str]) -> None:
    # The same consent posted by someone else, its date-time written in another offset.
    copy = {**body, "dateTime": body["dateTime"].replace("Z", "+00:00")}
    assert httpx.post(f"{sb.base_url}/v1/consents", json=copy, headers=API).status_code == 201


def body_of(key: str) -> dict[str, str]:
    [row] = [r for r in consent_rows(ROWS) if r["sourceKey"] == key]
    return {k: v for k, v in row.items() if k != "sourceKey"}


def phi_of(keys: list[str]) -> list[str]:
    """Values that must never reach the terminal: patient ids, cells, source keys."""
    values: list[str] = []
    for key in keys:
        values += [key, *body_of(key).values()]
    return [v for v in values if v not in ("active", "treatment")]  # words of our own text


def test_a_clean_import_verifies_with_nothing_to_report(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(imported, sandbox, capsys)
    assert code == 0
    assert f"{ROWS} agree" in out
    assert "0 missing · 0 differs · 0 duplicate" in out
    for value in phi_of(list(ROW_NUMBERS)):
        assert value not in out


@pytest.mark.parametrize(
    ("tamper", "kind", "fields"),
    [
        (tamper_delete, "missing", []),
        (tamper_patch, "differs", ["status"]),
        (tamper_post, "duplicate", []),
    ],
)
def test_verify_reports_what_the_server_changed(
    tmp_path: Path,
    imported: Path,
    sandbox: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    tamper: Any,
    kind: str,
    fields: list[str],
) -> None:
    key = "K000005"
    row, consent_id = row_of(imported, key)
    tamper(sandbox, consent_id, body_of(key))
    reports = [tmp_path / "v.json", tmp_path / "v.csv", tmp_path / "v.html"]
    args = [arg for path in reports for arg in ("--report", str(path))]
    code, out = cli(imported, sandbox, capsys, *args)

    assert code == 1
    line = next(text for text in out.splitlines() if text.strip().startswith(kind))
    assert f"in.csv:{row}" in line
    assert consent_id in line
    for value in phi_of([key]):
        assert value not in out  # no patient id, source key or cell on the terminal

    document = json.loads(reports[0].read_text(encoding="utf-8"))
    [finding] = document["findings"]
    assert (finding["kind"], finding["source_row"], finding["source_key"]) == (kind, row, key)
    assert (finding["consent_id"], finding["fields"]) == (consent_id, fields)
    assert finding["patient_id"] == body_of(key)["patientId"]  # the report file may hold it
    assert document["summary"][kind] == 1
    if kind == "duplicate":
        others = [
            c["id"] for c in sandbox.consents() if c["id"] not in ledger_ids(imported).values()
        ]
        assert finding["duplicate_id"] == others[0]
    with reports[1].open(encoding="utf-8-sig", newline="") as handle:
        [csv_row] = list(csv.DictReader(handle))
    assert (csv_row["kind"], csv_row["source_key"], csv_row["consent_id"]) == (
        kind,
        key,
        consent_id,
    )
    html = reports[2].read_text(encoding="utf-8")
    assert f'data-kind="{kind}"' in html
    assert consent_id in html
    for path in reports:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # they hold patient ids


def test_all_three_at_once_and_nothing_else(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = ledger_ids(imported)
    tamper_delete(sandbox, ids["K000001"], body_of("K000001"))
    tamper_patch(sandbox, ids["K000002"], body_of("K000002"))
    tamper_post(sandbox, ids["K000003"], body_of("K000003"))
    result = verify(VerifyConfig(imported, base_url=sandbox.base_url, api_key=KEY))
    assert result.exit_code == 1
    assert [(f.kind, f.source_key) for f in result.findings] == [
        ("missing", "K000001"),
        ("differs", "K000002"),
        ("duplicate", "K000003"),
    ]
    assert (result.checked, result.agree) == (ROWS, ROWS - 2)


def test_verify_never_writes_to_the_server_or_the_ledger(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = ledger_ids(imported)
    tamper_delete(sandbox, ids["K000001"], body_of("K000001"))
    tamper_post(sandbox, ids["K000003"], body_of("K000003"))
    before = sandbox.stats()["by_method"]
    digest = hashlib.sha256(imported.read_bytes()).hexdigest()
    code, _ = cli(imported, sandbox, capsys)
    assert code == 1
    after = sandbox.stats()["by_method"]
    assert {m: after.get(m, 0) - before.get(m, 0) for m in ("POST", "PATCH", "DELETE")} == {
        "POST": 0,
        "PATCH": 0,
        "DELETE": 0,
    }
    assert after["GET"] > before.get("GET", 0)
    assert hashlib.sha256(imported.read_bytes()).hexdigest() == digest


def done(key: str, patient: str | None) -> DoneConsent:
    return DoneConsent(key, "in.csv", 2, f"consent_{key}", patient, None, "{}")


@pytest.mark.parametrize(
    ("chosen", "everything", "searched", "fetched"),
    [
        # (patients of the chosen rows, patients of all ledger rows) -> searches, GETs
        (["a", "a", "a"], ["a", "a", "a"], {"a": 3}, 0),  # 1 search beats 3 GETs
        (["a"], ["a"], {"a": 1}, 0),  # a tie: the search, which also sees duplicates
        (["a", "b"], ["a", "b"], {"a": 1, "b": 1}, 0),
        (["a"], ["a"] * 150, {}, 1),  # a sample of 1 of 150: 2+ pages cost more than 1 GET
        (["a", "a"], ["a"] * 150, {"a": 2}, 0),  # 2 pages == 2 GETs: the search
        (["a"] * 3, ["a"] * 350, {}, 3),  # 4 pages > 3 GETs
        ([None, None], [None, None], {}, 2),  # no patient id: only a GET can find it
    ],
)
def test_plan_picks_the_cheaper_read(
    chosen: list[str | None],
    everything: list[str | None],
    searched: dict[str, int],
    fetched: int,
) -> None:
    rows = [done(f"k{i}", patient) for i, patient in enumerate(everything)]
    plan = plan_reads(rows[: len(chosen)], rows)
    assert {p: len(rs) for p, rs in plan.searches.items()} == searched
    assert len(plan.gets) == fetched


@pytest.mark.parametrize(
    ("sample", "requests", "searched", "fetched"),
    [
        (None, 2 + 3, 4, 0),  # 150 consents of one patient: 2 pages; 3 others: 1 search each
        (1, 1, 0, 1),  # 1 of them: 1 GET costs less than the 2 pages of a search
    ],
)
def test_verify_reads_by_cost_over_the_wire(
    tmp_path: Path,
    sandbox: RunningSandbox,
    sample: int | None,
    requests: int,
    searched: int,
    fetched: int,
) -> None:
    rows = list(consent_rows(150, patientId="pt_many"))
    for day, row in enumerate(rows):  # each on a day of its own: none a suspect duplicate
        row["dateTime"] = f"{date(2020, 1, 1) + timedelta(days=day)}T09:00:00Z"
    rows += consent_rows(3, start=150)  # three other patients, one consent each
    ledger = tmp_path / "l.db"
    assert run(write_csv(tmp_path / "in.csv", rows), sandbox.base_url, ledger).exit_code == 0
    before = sandbox.stats()["requests"]
    # A sample of 1 of 153 lands on pt_many with seed 1 (its 150 rows are 2 pages to read).
    config = VerifyConfig(ledger, base_url=sandbox.base_url, api_key=KEY, sample=sample, seed=1)
    result = verify(config)
    assert result.exit_code == 0, result.findings
    assert (result.searched_patients, result.fetched_by_id) == (searched, fetched)
    assert result.requests == requests
    assert sandbox.stats()["requests"] - before == requests


def test_a_search_that_would_cost_more_than_gets_stops_and_fetches_by_id(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    # 250 consents of the patient that are not ours: a full search would take 3 pages.
    with httpx.Client(base_url=sandbox.base_url, headers=API) as client:
        for i in range(250):
            body = {**body_of("K000001"), "dateTime": f"2020-01-01T00:{i // 60:02d}:{i % 60:02d}Z"}
            assert client.post("/v1/consents", json=body).status_code == 201
    source = write_csv(tmp_path / "in.csv", [next(consent_rows(1, start=1))])
    ledger = tmp_path / "l.db"
    assert run(source, sandbox.base_url, ledger, skip_existing=False).exit_code == 0
    before = sandbox.stats()["requests"]
    result = verify(VerifyConfig(ledger, base_url=sandbox.base_url, api_key=KEY))
    assert (result.exit_code, result.agree) == (0, 1)
    # One page (ours is not on it), then one GET: 2 requests instead of 3 pages.
    assert (result.searched_patients, result.fetched_by_id, result.requests) == (1, 1, 2)
    assert sandbox.stats()["requests"] - before == 2


def test_search_lag_is_not_mistaken_for_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every new consent stays out of search for a minute: verify must fetch by id.
    with running_sandbox(SandboxConfig(search_lag_ms=60_000)) as sb:
        source = write_csv(tmp_path / "in.csv", consent_rows(5))
        ledger = tmp_path / "l.db"
        assert run(source, sb.base_url, ledger).exit_code == 0
        result = verify(VerifyConfig(ledger, base_url=sb.base_url, api_key=KEY))
    assert (result.exit_code, result.agree, result.fetched_by_id) == (0, 5, 5)


def test_unknown_outcomes_are_listed(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger(imported)
    src = Source("K999999", "in.csv", 99)
    with ledger.transaction():  # a POST whose outcome stayed unknown after every retry
        ledger.intent(1, src, Op.CREATE, body="{}", body_hash="h", patient_id="pt_secret")
        error = ErrorNote("api", "outcome_unknown", "no answer")
        ledger.failed(1, src, Op.CREATE, error)
    ledger.close()
    code, out = cli(imported, sandbox, capsys)
    assert code == 1
    assert "outcome_unknown" in out
    assert "in.csv:99" in out
    assert "pt_secret" not in out
    assert "K999999" not in out


def test_verify_takes_the_ledger_lock(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    with LedgerLock(imported):
        code, out = cli(imported, sandbox, capsys)
    assert code == 2
    assert "in use" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-url", "http://127.0.0.1:1"], "records imports into"),
        (["--report", "v.txt"], "unknown report type"),
        (["--sample", "0"], "--sample"),
    ],
)
def test_bad_settings_exit_2(
    imported: Path,
    sandbox: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    code, out = cli(imported, sandbox, capsys, *args)
    assert code == 2
    assert message in out
    assert "Traceback" not in out


def test_a_missing_ledger_exits_2(
    tmp_path: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(tmp_path / "none.db", sandbox, capsys)
    assert code == 2
    assert "no such file" in out
    assert not (tmp_path / "none.db").exists()  # never created


def test_a_spent_budget_past_max_wait_stops_with_exit_3(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.configure(rate_limit=3, rate_window_s=3600)
    before = sandbox.stats()["requests"]
    code, out = cli(imported, sandbox, capsys, "--max-wait", "1", "--concurrency", "1")
    assert code == 3
    assert "Stopped early" in out
    assert "past --max-wait" in out
    # Stopped when the budget was spent, instead of collecting 429s for the other patients.
    assert sandbox.stats()["requests"] - before == 3
    assert sandbox.stats()["rate_limited"] == 0


@pytest.mark.parametrize(
    ("server", "sent", "differ"),
    [
        # (server's copy, the fields sent as the ledger hashes them) -> differing fields
        ({"id": "c", "patientId": "p", "scope": "treatment"}, {"patientId": "p"}, ["scope"]),
        ({"id": "c", "patientId": "p", "status": "active"}, {"patientId": "p"}, []),  # default
        ({"id": "c", "patientId": "p", "status": "draft"}, {"patientId": "p"}, ["status"]),
        ({"id": "c", "patientId": "q"}, {"patientId": "p"}, ["patientId"]),
        ({"id": "c"}, {"patientId": "p"}, ["patientId"]),
        # normalised like a row: the same instant in another spelling is no difference
        (
            {**body_of("K000001"), "id": "c", "dateTime": "2024-02-02T01:01:00+00:00"},
            body_of("K000001"),
            [],
        ),
    ],
)
def test_differing_fields(server: dict[str, Any], sent: dict[str, str], differ: list[str]) -> None:
    from importer._rows import body_field_hashes
    from importer.commands._verify import normalised_body

    hashes = (
        body_field_hashes(normalised_body(sent)) if "scope" in sent else body_field_hashes(sent)
    )
    assert differing_fields(server, hashes) == differ


def test_same_identity_ignores_fields_outside_the_identity() -> None:
    from importer._rows import body_field_hashes
    from importer.commands._verify import normalised_body

    sent = body_field_hashes(normalised_body(body_of("K000001")))
    assert same_identity({**body_of("K000001"), "status": "inactive"}, sent)
    assert not same_identity({**body_of("K000001"), "scope": "research"}, sent)


def test_reads_that_keep_failing_are_reported_unchecked(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.configure(fault_unavailable=1.0)  # every read answers 503
    code, out = cli(imported, sandbox, capsys, "--max-attempts", "2")
    assert code == 1
    assert f"{ROWS} unchecked" in out
    assert "could not read it: http_503" in out
    assert sandbox.stats()["requests"] - ROWS == 2 * ROWS  # the import's POSTs, then 2 tries


def test_a_ledger_with_nothing_done_agrees_without_a_request(
    tmp_path: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(2, patientId="not a valid id!"))
    ledger = tmp_path / "l.db"
    assert run(source, sandbox.base_url, ledger).exit_code == 1  # every row invalid
    code, out = cli(ledger, sandbox, capsys)
    assert code == 0
    assert "0 of 0 consents" in out
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize(
    "args",
    [
        [],  # several workers would each have sent a read
        ["--concurrency", "1"],
        ["--sample", "3"],
    ],
)
def test_a_refused_key_is_one_line_exit_2_after_one_request(
    imported: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    sandbox.configure(revoked_keys=[KEY])
    before = sandbox.stats()["requests"]
    code, out = cli(imported, sandbox, capsys, *args)
    assert code == 2
    [error] = [line for line in out.splitlines() if "error" in line]  # after the plan line
    assert "refused the API key clk_test_…1234 (401 KEY_REVOKED)" in error
    assert "Stopped early" not in out
    assert "verify again" not in out
    assert sandbox.stats()["requests"] - before == 1
