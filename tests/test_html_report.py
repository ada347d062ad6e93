"""The HTML report: self-contained, escaped, redactable, exact at 100,000 errors."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from importer._results import RunStats, ValidationSummary
from importer._rows import Row, RowError
from importer.reports._html_report import (
    MAX_BARS,
    TABLE_ROWS,
    bar_chart,
    render_run_html,
    render_validation_html,
    throughput_chart,
    write_run_html,
    write_validation_html,
)

_VOID = {"meta", "br", "hr", "img", "input", "link", "source", "wbr", "col", "area", "base"}


class Page(HTMLParser):
    """Elements, attributes and the text under each id of an HTML page, as a browser reads them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self._texts: dict[str, list[str]] = {}
        self._open: list[tuple[str, str]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag not in _VOID:
            self._open.append((tag, attributes.get("id", "")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self._texts.setdefault(element_id, []).append(data)

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.elements if "id" in a}

    def by_id(self, element_id: str) -> dict[str, str]:
        return next(a for _, a in self.elements if a.get("id") == element_id)

    def text(self, element_id: str) -> str:
        """The text under an element, whitespace collapsed (what a reader sees)."""
        return " ".join(" ".join(self._texts.get(element_id, [])).split())

    def having_class(self, name: str) -> list[tuple[str, dict[str, str]]]:
        return [(t, a) for t, a in self.elements if name in a.get("class", "").split()]


def summary_of(errors: list[RowError], *, clean: dict[str, int] | None = None) -> ValidationSummary:
    """A summary built the way validation builds it: one Row per (file, row)."""
    summary = ValidationSummary()
    rows: dict[tuple[str, int], list[RowError]] = {}
    for error in errors:
        rows.setdefault((error.file, error.row), []).append(error)
    for (file, number), row_errors in rows.items():
        summary.add(Row(file=file, row=number, source_key=f"k{number}", errors=row_errors))
    for file, count in (clean or {}).items():
        for i in range(count):
            summary.add(Row(file=file, row=100_000_000 + i, source_key=f"ok{i}"))
    return summary


def error(
    row: int = 2,
    *,
    file: str = "consents.csv",
    field: str = "dateTime",
    code: str = "invalid_date",
    value: str = "2024-13-45",
) -> RowError:
    return RowError(file, row, field, code, f"{field}: wrong ({code})", "validate", value)


def run_stats(**changes: object) -> RunStats:
    stats = RunStats(
        rows=5_000,
        valid=4_900,
        invalid=100,
        created=4_700,
        adopted=12,
        updated=101,
        unchanged=50,
        failed=37,
        retries=88,
        requests=4_912,
        rate_limited=23,
        duration_s=125.5,
        by_error={"conflict": 30, "server_error": 7},
        timeline=[(float(t), 40 * t) for t in range(1, 126)],
    )
    for name, value in changes.items():
        setattr(stats, name, value)
    return stats


SAMPLE = summary_of(
    [
        error(5, field="scope", code="invalid_enum", value="marketing"),
        error(8),
        error(11, field="patientId", code="missing_required", value=""),
        error(14, file="legacy/export.csv", field="status", code="invalid_enum", value="Maybe"),
    ],
    clean={"consents.csv": 17, "legacy/export.csv": 12},
)


# --- self-contained -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [render_validation_html(SAMPLE), render_run_html(SAMPLE, run_stats())],
    ids=["validation", "run"],
)
def test_report_loads_nothing_from_anywhere(html: str) -> None:
    page = Page(html)
    tags = {tag for tag, _ in page.elements}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "image", "use"}
    for _, attributes in page.elements:
        for name in ("src", "href", "xlink:href", "action", "data", "poster"):
            assert name not in attributes, attributes
    # No CSS import, web font or background image either.
    assert "@import" not in html
    assert "url(" not in html
    assert "@font-face" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)


# --- escaping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        '"><svg onload=alert(1)>',
        "</td></tr></table><b>x",
        "{{ 7 * 7 }}",  # data is never template source
    ],
)
def test_untrusted_text_renders_as_text(hostile: str) -> None:
    summary = summary_of(
        [error(3, file=f"{hostile}.csv", field=hostile, code=hostile, value=hostile)]
    )
    html = render_validation_html(summary)
    page = Page(html)
    if "<" in hostile:
        assert hostile not in html
    assert "49" not in page.text("errors-table")
    assert not [t for t, _ in page.elements if t in {"script", "b"}]
    assert not [a for _, a in page.elements if "onload" in a]
    assert hostile in page.text("errors-table")
    assert hostile in page.text("files-table")


# --- redaction ------------------------------------------------------------------------------

SECRET = "Zoë Müller 1961-04-02 MRN0099999"
LONG_SECRET = "Patient said: call my daughter Anna Kowalczyk on 555-0199 first"


@pytest.mark.parametrize("kind", ["validation", "run"])
@pytest.mark.parametrize(
    ("redact", "shown"),
    [
        (False, True),
        (True, False),
    ],
)
def test_values_appear_only_when_not_redacted(kind: str, redact: bool, shown: bool) -> None:
    summary = summary_of(
        [
            error(4, field="patientId", code="unknown_patient", value=SECRET),
            error(9, field="purpose", code="invalid_enum", value=LONG_SECRET),
        ]
    )
    if kind == "run":
        html = render_run_html(summary, run_stats(), redact=redact)
    else:
        html = render_validation_html(summary, redact=redact)
    page = Page(html)
    assert (SECRET in html) is shown
    # A long value is cut in the cell, whole on hover: neither may survive redaction.
    assert (LONG_SECRET[:30] in html) is shown
    assert (any(a.get("title") == LONG_SECRET for _, a in page.elements)) is shown
    assert ("Value" in page.text("errors-table")) is shown
    # Where the problem is stays in the report.
    assert "unknown_patient" in page.text("errors-table")
    assert ("Values redacted" in page.text("privacy")) is redact


# --- the error table at 100,000 errors ------------------------------------------------------

RULES = ["invalid_date", "missing_required", "invalid_enum", "unknown_patient", "invalid_id"]


@pytest.fixture(scope="module")
def huge() -> ValidationSummary:
    errors = [
        error(i + 2, field=f"field{i % 3}", code=RULES[i % len(RULES)], value=f"v{i}")
        for i in range(100_000)
    ]
    return summary_of(errors, clean={"consents.csv": 5_000})


def test_100k_errors_table_is_capped_counts_exact(huge: ValidationSummary) -> None:
    started = time.perf_counter()
    html = render_validation_html(huge)
    elapsed = time.perf_counter() - started
    page = Page(html)

    assert elapsed < 2.0
    assert len(html.encode()) < 3_000_000
    table_rows = html.split('id="errors-table"', 1)[1].split("</table>", 1)[0].count("<tr")
    assert table_rows == TABLE_ROWS + 1  # the header row
    assert "v999" in html
    assert "v1000<" not in html
    assert page.text("errors-cap").startswith(
        "Showing the first 1,000 of 100,000 errors; the counts above are exact."
    )
    assert page.by_id("figure-invalid")["data-value"] == "100000"
    assert page.text("figure-invalid").startswith("Invalid 100,000")
    assert page.by_id("figure-rows")["data-value"] == "105000"
    counts = {a["data-label"]: int(a["data-count"]) for _, a in page.having_class("bar")[:5]}
    assert counts == dict.fromkeys(RULES, 20_000)


def test_cap_note_counts_errors_dropped_upstream() -> None:
    # The note takes its total from the rule counts, even when the error list is shorter.
    summary = summary_of([error(i + 2) for i in range(2_000)])
    del summary.errors[500:]
    page = Page(render_validation_html(summary))
    assert page.text("errors-cap").startswith("Showing the first 500 of 2,000 errors")


def test_no_errors_no_table() -> None:
    page = Page(render_validation_html(summary_of([], clean={"a.csv": 3})))
    assert "errors-table" not in page.ids()
    assert page.text("errors-empty") == "No row errors."
    assert page.text("status") == "All 3 rows valid"
    assert {"chart-by-rule-empty", "chart-by-field-empty"} <= page.ids()


@pytest.mark.parametrize(
    ("value", "cell", "title"),
    [
        ("short", "short", None),
        ("x" * 40, "x" * 40, None),  # exactly the limit: not cut
        ("x" * 41, "x" * 39 + "…", "x" * 41),
        ("line one\nline two", "line one↵line two", None),  # a line break stays visible
        ("", "(empty)", None),
    ],
)
def test_value_cell(value: str, cell: str, title: str | None) -> None:
    page = Page(render_validation_html(summary_of([error(value=value)])))
    assert page.text("errors-table").endswith(cell)
    titles = [a["title"] for t, a in page.elements if t == "td" and "title" in a]
    assert titles == ([title] if title else [])


# --- per-file breakdown ---------------------------------------------------------------------


def test_breakdown_per_file() -> None:
    page = Page(render_validation_html(SAMPLE))
    rows = [a["data-file"] for _, a in page.having_class("file-row")]
    assert rows == ["consents.csv", "legacy/export.csv"]
    assert page.text("files-table").split("valid invalid ", 1)[1] == (
        "consents.csv 20 17 3 15% legacy/export.csv 13 12 1 8%"
    )
    # Bars are scaled to the largest file: 20 rows = 200 units, 13 rows = 130.
    valid = [float(a["width"]) for _, a in page.having_class("seg-valid")][1:]
    invalid = [float(a["width"]) for _, a in page.having_class("seg-invalid")][1:]
    assert valid == [170.0, 120.0]
    assert invalid == [30.0, 10.0]


# --- figures and charts ---------------------------------------------------------------------


def test_validation_figures() -> None:
    page = Page(render_validation_html(SAMPLE, title="Dry run of exports/"))
    assert page.text("report-title") == "Dry run of exports/"
    assert page.text("figure-rows") == "Rows 33 in 2 files"
    assert page.text("figure-valid") == "Valid 29 88%"
    assert page.text("figure-invalid") == "Invalid 4 12% · 4 errors"
    assert page.text("status") == "4 rows need fixing"


def test_bar_widths_are_proportional_to_counts() -> None:
    summary = summary_of(
        [error(i + 2, code="invalid_date") for i in range(400)]
        + [error(i + 1000, code="invalid_enum") for i in range(100)]
        + [error(i + 2000, code="invalid_id") for i in range(50)]
    )
    page = Page(render_validation_html(summary))
    svg = page.by_id("chart-by-rule")
    assert "chart" in svg["class"].split()
    bars = [
        (int(a["data-count"]), float(a["width"]))
        for _, a in page.having_class("bar-rect")
        if a["data-count"]
    ][:3]
    assert [count for count, _ in bars] == [400, 100, 50]
    assert [width / count for count, width in bars] == pytest.approx([0.75] * 3)
    assert "invalid_date: 400" in page.text("chart-by-rule")


def test_bar_chart_folds_the_long_tail() -> None:
    chart = bar_chart([(f"field{i}", 100 - i) for i in range(20)])
    assert len(chart.bars) == MAX_BARS
    assert chart.bars[-1].label == f"{20 - MAX_BARS + 1} others"
    assert chart.total == sum(100 - i for i in range(20))
    # A single error beside thousands still shows.
    assert bar_chart([("a", 100_000), ("b", 1)]).bars[1].width > 0


RUN_ONLY = {
    "figure-created",
    "figure-adopted",
    "figure-updated",
    "figure-unchanged",
    "figure-failed",
    "figure-requests",
    "figure-retries",
    "figure-rate-limited",
    "figure-duration",
    "throughput-chart",
    "failed-by-code",
    "chart-by-error",
}


def test_run_sections_only_in_run_reports() -> None:
    validation = Page(render_validation_html(SAMPLE)).ids()
    run = Page(render_run_html(SAMPLE, run_stats())).ids()
    assert not validation & RUN_ONLY
    assert run >= RUN_ONLY
    shared = {"figure-rows", "figure-valid", "figure-invalid", "chart-by-rule", "errors-table"}
    assert shared <= validation
    assert shared <= run


def test_run_figures() -> None:
    page = Page(render_run_html(SAMPLE, run_stats()))
    texts = {key: page.text(f"figure-{key}") for key in ("created", "rate-limited", "duration")}
    assert texts == {
        "created": "Created 4,700",
        "rate-limited": "429s 23 rate-limited responses",
        "duration": "Duration 2 m 06 s",
    }
    assert page.by_id("figure-duration")["data-value"] == "125.5"
    assert page.text("failed-by-code").startswith("Failed at the API, by code 37 conflict")
    assert page.text("status") == "Finished with problems"
    assert "run-state" not in page.ids()


@pytest.mark.parametrize(
    ("changes", "headline"),
    [
        ({"paused": True, "rows_left": 1_200, "resets_in_s": 42.0}, "Run paused"),
        ({"aborted": "authentication failed (401)"}, "Run aborted: authentication failed (401)"),
        # Aborted wins: a paused run that was then interrupted did not finish either way.
        ({"paused": True, "aborted": "interrupted"}, "Run aborted: interrupted"),
    ],
)
def test_unfinished_runs_say_so_first(changes: dict[str, object], headline: str) -> None:
    html = render_run_html(SAMPLE, run_stats(**changes))
    page = Page(html)
    assert page.text("run-state").startswith(headline)
    assert "--ledger" in page.text("run-state")
    # The banner comes before every figure.
    assert html.index('id="run-state"') < html.index('id="figures"')
    if changes.get("rows_left"):
        assert "1,200 rows were not sent" in page.text("run-state")


def test_throughput_chart_of_a_steady_run() -> None:
    chart = throughput_chart([(float(t), 25 * t) for t in range(1, 61)])
    assert chart is not None
    assert chart.peak == pytest.approx(25)
    heights = {y for _, y in (p.split(",") for p in chart.line[1:].split(" L"))}
    assert len(heights) == 1  # a steady rate is a flat line
    assert [t.label for t in chart.x_ticks] == ["0s", "10s", "20s", "30s", "40s", "50s", "1m"]
    assert chart.area.endswith("Z")


@pytest.mark.parametrize(
    "timeline",
    [
        [],
        [(0.0, 0)],  # one sample: no interval to measure
        [(0.5, 4), (1.06, 16)],  # a run of a second: rates that short are noise
    ],
)
def test_throughput_needs_an_interval(timeline: list[tuple[float, int]]) -> None:
    assert throughput_chart(timeline) is None
    page = Page(render_run_html(SAMPLE, run_stats(timeline=timeline)))
    assert page.text("throughput-chart-empty") == "Too short a run to chart."


def test_throughput_of_a_long_run_stays_small() -> None:
    # A day at one sample a second: the chart averages it down, the page does not grow.
    chart = throughput_chart([(float(t), 10 * t) for t in range(1, 86_401)])
    assert chart is not None
    assert chart.line.count(" L") <= 151  # 150 samples and the two edges
    assert chart.peak == pytest.approx(10)


def test_write_functions_write_utf8(tmp_path: Path) -> None:
    write_validation_html(tmp_path / "v.html", SAMPLE)
    write_run_html(tmp_path / "r.html", SAMPLE, run_stats(), redact=True)
    assert "Validation report" in (tmp_path / "v.html").read_text(encoding="utf-8")
    run = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Import run report" in run
    assert "marketing" not in run
