"""Self-contained HTML reports of a validation, a run or a verify, for the people who fix
the data.

One file, no network: inline CSS and inline SVG charts whose geometry is computed here, so
the template only places numbers. The template autoescapes everything, because every cell
value and file name in it comes from an untrusted export. With `redact=True` no cell value
reaches the page: the report then says where each problem is, not what the cell held.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from importer._version import __version__
from importer.reports._outputs import write_text
from importer.reports._values import LIMIT as VALUES_LIMIT

if TYPE_CHECKING:
    from importer._results import RunStats, ValidationSummary, VerifyResult
    from importer._rows import RowError

#: Rows of the error table. Past a few thousand rows a page opens and prints slowly and
#: nobody reads it; the counts and charts stay exact, and the CSV report has every row.
TABLE_ROWS = 1_000
#: A value longer than this is cut with an ellipsis in the table.
VALUE_CHARS = 40
#: Bars per chart; the rest are folded into one "other" bar so the chart stays readable.
MAX_BARS = 12

# Bar chart geometry, in SVG user units: drawn at this size, shrunk to fit a narrower column.
_BAR_LABEL_W = 168
_BAR_X = 176
_BAR_MAX_W = 300
_BAR_ROW_H = 26
_BAR_H = 16
_BAR_CHART_W = 540
_LABEL_CHARS = 24

# Throughput chart geometry.
_LINE_W = 1000
_LINE_H = 230
_LINE_LEFT = 56
_LINE_RIGHT = 16
_LINE_TOP = 14
_LINE_BOTTOM = 30
#: Points in the throughput line; a long run's once-a-second timeline is averaged down to it.
_LINE_POINTS = 150
#: Shorter runs get no throughput chart.
_LINE_MIN_S = 2.0

# Per-file bars.
_FILE_BAR_W = 200


@dataclass(frozen=True)
class Figure:
    """One big number at the top of the report."""

    key: str
    label: str
    value: str
    raw: int | float
    tone: str = ""
    note: str = ""


@dataclass(frozen=True)
class Bar:
    label: str
    title: str
    count: int
    count_text: str
    y: float
    width: float


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    width: int
    height: int
    bar_x: int
    bar_h: int
    label_w: int
    total: int


@dataclass(frozen=True)
class Tick:
    label: str
    pos: float


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    line: str
    area: str
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    peak: float
    peak_text: str


@dataclass(frozen=True)
class FileRow:
    name: str
    rows: int
    valid: int
    invalid: int
    invalid_pct: str
    valid_w: float
    invalid_w: float


@dataclass(frozen=True)
class ErrorRow:
    file: str
    row: int
    field: str
    code: str
    message: str
    value: str
    full_value: str
    consent: str = ""  # the [[consents]] key, for a row making several consents
    sheet: str = ""  # an Excel file's sheet, shown after its name


def write_validation_html(
    path: Path,
    summary: ValidationSummary,
    *,
    redact: bool = False,
    title: str = "Validation report",
) -> None:
    """Write the HTML report of a validation (a dry run) to `path`."""
    write_text(path, render_validation_html(summary, redact=redact, title=title))


def write_run_html(
    path: Path, summary: ValidationSummary, stats: RunStats, *, redact: bool = False
) -> None:
    """Write the HTML report of a run: the validation plus what the API did."""
    write_text(path, render_run_html(summary, stats, redact=redact))


def render_validation_html(
    summary: ValidationSummary, *, redact: bool = False, title: str = "Validation report"
) -> str:
    """The HTML of `write_validation_html`."""
    return _template().render(**_validation_context(summary, redact=redact, title=title))


def render_run_html(summary: ValidationSummary, stats: RunStats, *, redact: bool = False) -> str:
    """The HTML of `write_run_html`."""
    context = _validation_context(summary, redact=redact, title="Import run report")
    context.update(_run_context(stats))
    return _template().render(**context)


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("importer", "templates"),
        # Every value in the page may come from an export: escape all of it, always.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env.get_template("report.html")


def _num(n: int) -> str:
    return f"{n:,}"


def _validation_context(summary: ValidationSummary, *, redact: bool, title: str) -> dict[str, Any]:
    # Counted from the rule counts, which stay exact whatever the error list holds.
    total_errors = max(len(summary.errors), sum(summary.by_rule.values()))
    shown = [_error_row(e, redact=redact) for e in summary.errors[:TABLE_ROWS]]
    return {
        "title": title,
        "version": __version__,
        "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
        "redact": redact,
        "is_run": False,
        "files": list(summary.by_file),
        "rows": summary.rows,
        "invalid": summary.invalid,
        "status": _validation_status(summary),
        "figures": _validation_figures(summary),
        "by_rule": bar_chart(summary.by_rule.most_common()),
        "by_field": bar_chart(summary.by_field.most_common()),
        "file_rows": file_rows(summary),
        "errors": shown,
        "total_errors": total_errors,
        "total_errors_text": f"{total_errors:,}",
        "shown_text": f"{len(shown):,}",
        "capped": len(shown) < total_errors,
        "warnings": summary.warnings,
        "values": summary.values,
        "values_limit": VALUES_LIMIT,
    }


def _run_context(stats: RunStats) -> dict[str, Any]:
    finished = stats.finished
    return {
        "is_run": True,
        "status": _run_status(stats),
        "banner": _run_banner(stats),
        "run_figures": _run_figures(stats),
        "traffic_figures": _traffic_figures(stats),
        "throughput": throughput_chart(stats.timeline),
        "mean_rate": _rate_text(finished / stats.duration_s) if stats.duration_s > 0 else "",
        "by_error": bar_chart(sorted(stats.by_error.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _validation_status(summary: ValidationSummary) -> tuple[str, str]:
    if summary.rows == 0:
        return ("warn", "No rows read")
    if summary.invalid == 0:
        return ("good", f"All {summary.rows:,} rows valid")
    noun = "row needs" if summary.invalid == 1 else "rows need"
    return ("bad", f"{summary.invalid:,} {noun} fixing")


def _run_status(stats: RunStats) -> tuple[str, str]:
    if stats.aborted:
        return ("bad", "Aborted")
    if stats.paused:
        return ("warn", "Paused")
    if stats.failed or stats.invalid:
        return ("bad", "Finished with problems")
    return ("good", "Complete")


def _run_banner(stats: RunStats) -> tuple[str, str, str] | None:
    """(kind, headline, what to do) for a run that did not finish, else None."""
    left = f"{stats.rows_left:,} rows were not sent." if stats.rows_left else ""
    if stats.aborted:
        return (
            "aborted",
            f"Run aborted: {stats.aborted}",
            _sentences(
                left,
                "Every finished row is in the ledger; rerun the same command with the same "
                "--ledger to resume.",
            ),
        )
    if stats.paused:
        resets = (
            f"The API's budget resets in {_duration_text(stats.resets_in_s)}."
            if stats.resets_in_s
            else ""
        )
        return (
            "paused",
            "Run paused: the API's rate-limit budget ran out",
            _sentences(
                left,
                resets,
                "Rerun the same command with the same --ledger to continue where it stopped.",
            ),
        )
    return None


def _sentences(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _pct(part: int, whole: int) -> str:
    if not whole:
        return ""
    share = 100 * part / whole
    # Never round a non-zero share down to "0%" or a partial one up to "100%".
    if 0 < share < 1:
        return "<1%"
    if 99 < share < 100:
        return ">99%"
    return f"{share:.0f}%"


def _count(key: str, label: str, n: int, tone: str = "", note: str = "") -> Figure:
    return Figure(key, label, f"{n:,}", n, tone, note)


def _validation_figures(summary: ValidationSummary) -> list[Figure]:
    files = len(summary.by_file)
    total = sum(summary.by_rule.values())
    # A row can break several rules: say how many errors the invalid rows hold.
    errors = f"· {total:,} error{'s' if total != 1 else ''}" if total else ""
    figures = [
        _count("rows", "Rows", summary.rows, note=f"in {files:,} file{'s' if files != 1 else ''}"),
        _count("valid", "Valid", summary.valid, "good", _pct(summary.valid, summary.rows)),
        _count(
            "invalid",
            "Invalid",
            summary.invalid,
            "bad" if summary.invalid else "",
            _sentences(_pct(summary.invalid, summary.rows), errors),
        ),
    ]
    if summary.skipped:
        figures.append(
            _count("skipped", "Skipped", summary.skipped, note="filtered out; never sent")
        )
    return figures


def _run_figures(stats: RunStats) -> list[Figure]:
    figures = [
        _count("created", "Created", stats.created, "good"),
        _count("adopted", "Adopted", stats.adopted, note="found already in the API"),
        _count("updated", "Updated", stats.updated),
        _count("unchanged", "Unchanged", stats.unchanged),
        _count("failed", "Failed", stats.failed, "bad" if stats.failed else ""),
    ]
    if stats.revoked:
        figures.append(_count("revoked", "Revoked", stats.revoked, note="set to inactive"))
    return figures


def _traffic_figures(stats: RunStats) -> list[Figure]:
    return [
        _count("requests", "Requests", stats.requests),
        _count("retries", "Retries", stats.retries),
        _count(
            "rate-limited",
            "429s",
            stats.rate_limited,
            "warn" if stats.rate_limited else "",
            "rate-limited responses",
        ),
        Figure(
            "duration", "Duration", _duration_text(stats.duration_s), round(stats.duration_s, 3)
        ),
    ]


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} m"
    return f"{minutes} m {secs:02d} s"


def _rate_text(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:,.1f}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bar_chart(counts: Iterable[tuple[str, int]]) -> BarChart:
    """A horizontal bar chart of (label, count), largest first; widths proportional to counts."""
    items = [(label, n) for label, n in counts if n > 0]
    if len(items) > MAX_BARS:
        rest = items[MAX_BARS - 1 :]
        items = [
            *items[: MAX_BARS - 1],
            (f"{len(rest)} others", sum(n for _, n in rest)),
        ]
    top = max((n for _, n in items), default=0)
    bars = [
        Bar(
            label=_shorten(label, _LABEL_CHARS),
            title=label,
            count=n,
            count_text=f"{n:,}",
            y=i * _BAR_ROW_H,
            # A count of 1 beside 100,000 still gets a visible sliver.
            width=round(max(_BAR_MAX_W * n / top, 1.5), 2),
        )
        for i, (label, n) in enumerate(items)
    ]
    return BarChart(
        bars=bars,
        width=_BAR_CHART_W,
        height=max(len(bars) * _BAR_ROW_H, 1),
        bar_x=_BAR_X,
        bar_h=_BAR_H,
        label_w=_BAR_LABEL_W,
        total=sum(n for _, n in items),
    )


def file_rows(summary: ValidationSummary) -> list[FileRow]:
    """The per-file table: counts and a valid/invalid bar scaled to the largest file."""
    top = max((c.rows for c in summary.by_file.values()), default=0)
    scale = _FILE_BAR_W / top if top else 0.0
    return [
        FileRow(
            name=name,
            rows=c.rows,
            valid=c.valid,
            invalid=c.invalid,
            invalid_pct=_pct(c.invalid, c.rows),
            valid_w=round(c.valid * scale, 2),
            invalid_w=round(c.invalid * scale, 2),
        )
        for name, c in summary.by_file.items()
    ]


def _error_row(error: RowError, *, redact: bool) -> ErrorRow:
    # The value is PHI: with redact it never leaves this function.
    value = "" if redact else error.value
    # Line breaks in a cell would otherwise vanish into one table line.
    visible = value.replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵")
    short = _shorten(visible, VALUE_CHARS)
    return ErrorRow(
        file=error.file,
        row=error.row,
        field=error.field,
        code=error.code,
        message=error.message,
        value=short,
        # Full value on hover only when it was cut, bounded so one huge cell can't bloat the page.
        full_value=_shorten(visible, 500) if short != visible else "",
        consent=error.consent,
        sheet=error.sheet,
    )


def throughput_chart(timeline: Sequence[tuple[float, int]]) -> LineChart | None:
    """An area chart of rows/s over the run from (seconds, rows finished) samples."""
    points = sorted((float(t), float(n)) for t, n in timeline)
    if points and points[0][0] > 0:
        points.insert(0, (0.0, 0.0))
    samples = _resample(points)
    rates = [
        (t0, t1, (n1 - n0) / (t1 - t0))
        for (t0, n0), (t1, n1) in itertools.pairwise(samples)
        if t1 > t0
    ]
    if not rates:
        return None
    start = samples[0][0]
    end = rates[-1][1]
    # Over a second or so, samples a second apart measure nothing worth a chart.
    if end - start < _LINE_MIN_S:
        return None
    peak = max(r for _, _, r in rates)
    y_top, y_step = _nice_top(peak)
    x_span = max(end - start, 1e-9)
    right = _LINE_W - _LINE_RIGHT
    bottom = _LINE_H - _LINE_BOTTOM
    plot_w = right - _LINE_LEFT
    plot_h = bottom - _LINE_TOP

    def x_of(t: float) -> float:
        return _LINE_LEFT + (t - start) / x_span * plot_w

    def y_of(rate: float) -> float:
        return bottom - rate / y_top * plot_h

    # One point per interval, at its middle (a rate belongs to the span it was measured
    # over), and the first and last rates held out to the run's edges.
    coords = [(x_of((t0 + t1) / 2), y_of(rate)) for t0, t1, rate in rates]
    coords = [(x_of(start), coords[0][1]), *coords, (x_of(end), coords[-1][1])]
    line = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = f"{line} L{coords[-1][0]:.1f},{bottom:.1f} L{coords[0][0]:.1f},{bottom:.1f} Z"
    y_ticks = [
        Tick(f"{v:,.0f}" if y_step >= 1 else f"{v:,.2g}", round(y_of(v), 1))
        for v in (y_step * i for i in range(round(y_top / y_step) + 1))
    ]
    x_step = _nice_seconds(x_span / 6)
    x_ticks = [
        Tick(_clock_text(start + x_step * i, x_step), round(x_of(start + x_step * i), 1))
        for i in range(int(x_span / x_step + 1e-9) + 1)
    ]
    return LineChart(
        width=_LINE_W,
        height=_LINE_H,
        left=_LINE_LEFT,
        right=right,
        top=_LINE_TOP,
        bottom=bottom,
        line=line,
        area=area,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        peak=peak,
        peak_text=_rate_text(peak),
    )


def _resample(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most `_LINE_POINTS` evenly spaced samples of the cumulative count (interpolated)."""
    if len(points) <= _LINE_POINTS + 1:
        return list(points)
    start, end = points[0][0], points[-1][0]
    times = [p[0] for p in points]
    out: list[tuple[float, float]] = []
    for i in range(_LINE_POINTS + 1):
        t = start + (end - start) * i / _LINE_POINTS
        j = min(bisect.bisect_left(times, t), len(points) - 1)
        t1, n1 = points[j]
        if j == 0 or t1 == t:
            out.append((t, n1))
            continue
        t0, n0 = points[j - 1]
        out.append((t, n0 + (n1 - n0) * (t - t0) / (t1 - t0)))
    return out


def _nice_top(peak: float) -> tuple[float, float]:
    """A round axis maximum at or above `peak`, and a round step giving 3 to 6 ticks."""
    if peak <= 0:
        return (1.0, 0.25)
    magnitude = 10 ** math.floor(math.log10(peak / 4))
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * magnitude
        if peak / step <= 5:
            return (math.ceil(peak / step - 1e-9) * step, step)
    return (math.ceil(peak / (10 * magnitude)) * 10 * magnitude, 10 * magnitude)


def _nice_seconds(rough: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if step >= rough:
            return float(step)
    return 3600 * math.ceil(rough / 3600)


def _clock_text(seconds: float, step: float) -> str:
    if step < 1:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}"
    return f"{minutes}m{secs:02d}" if secs else f"{minutes}m"


# -- verify ---------------------------------------------------------------------------


def write_verify_html(path: Path, result: VerifyResult) -> None:
    """Write the HTML report of `verify` to `path`, in the style of the other reports."""
    write_text(path, render_verify_html(result))


def render_verify_html(result: VerifyResult) -> str:
    """The HTML of `write_verify_html`."""
    counts = result.counts()
    shown = result.findings[:TABLE_ROWS]
    total = len(result.findings)
    fields: dict[str, int] = {}
    for finding in result.findings:
        for name in finding.fields:
            fields[name] = fields.get(name, 0) + 1
    read = result.checked + counts["unchecked"]
    if result.aborted:
        status = ("warn", "Stopped early")
    elif total:
        status = ("bad", f"{total:,} finding{'s' if total != 1 else ''}")
    else:
        status = ("good", f"All {read:,} consents agree")
    note = f"a sample of {result.ledger_consents:,}" if result.sampled else ""
    figures = [
        _count("read", "Read back", read, note=note or f"of {result.ledger_consents:,}"),
        _count("agree", "Agree", result.agree, "good", _pct(result.agree, read)),
        *(
            _count(kind.replace("_", "-"), kind.replace("_", " ").capitalize(), n, _tone(n))
            for kind, n in counts.items()
        ),
    ]
    traffic = [
        _count("requests", "Requests", result.requests, note="GET only"),
        _count("searched", "Patients searched", result.searched_patients),
        _count("fetched", "Fetched by id", result.fetched_by_id),
        _count("retries", "Retries", result.retries),
        Figure(
            "duration", "Duration", _duration_text(result.duration_s), round(result.duration_s, 3)
        ),
    ]
    env_template = _template().environment.get_template("verify.html")
    return env_template.render(
        title="Verify report",
        version=__version__,
        generated=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
        ledger=result.ledger,
        status=status,
        aborted=result.aborted,
        figures=figures,
        traffic_figures=traffic,
        by_kind=bar_chart((kind, n) for kind, n in counts.items()),
        by_field=bar_chart(sorted(fields.items(), key=lambda kv: (-kv[1], kv[0]))),
        findings=shown,
        total_text=f"{total:,}",
        shown_text=f"{len(shown):,}",
        capped=len(shown) < total,
    )


def _tone(n: int) -> str:
    return "bad" if n else ""
