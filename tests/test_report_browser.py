"""The HTML report as headless Chromium renders it: figures, charts, and a real picture.

Chromium must be on the PATH (`apt-get install chromium`). Without it the tests skip
locally and fail under CI (the `CI` environment variable), so CI cannot silently skip them.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from importer._results import RunStats, ValidationSummary
from importer.reports._html_report import write_run_html, write_validation_html
from tests.test_html_report import Page, error, summary_of

pytestmark = pytest.mark.browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(
            "chromium is not installed: CI must run the browser tests (apt-get install chromium)"
        )
    pytest.skip("chromium is not installed (apt-get install chromium)")


def browse(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def realistic() -> tuple[ValidationSummary, RunStats]:
    """A run over two legacy exports: a few hundred rows, most fine, some broken."""
    errors = [
        error(i * 3 + 2, file="exports/consents_2021.csv", value=f"31/02/2021 {i}")
        for i in range(120)
    ]
    errors += [
        error(
            i * 5 + 4,
            file="exports/consents_2022.xlsx",
            field="patientId",
            code="missing_required",
            value="",
        )
        for i in range(45)
    ]
    errors += [
        error(
            i * 7 + 1000,
            file="exports/consents_2022.xlsx",
            field="scope",
            code="invalid_enum",
            value="Photo Release",
        )
        for i in range(17)
    ]
    summary = summary_of(
        errors, clean={"exports/consents_2021.csv": 2_880, "exports/consents_2022.xlsx": 1_938}
    )
    stats = RunStats(
        rows=summary.rows,
        valid=summary.valid,
        invalid=summary.invalid,
        created=4_512,
        adopted=9,
        updated=205,
        unchanged=61,
        failed=31,
        retries=96,
        requests=4_830,
        rate_limited=27,
        duration_s=301.7,
        by_error={"conflict": 19, "validation_error": 9, "server_error": 3},
        # A steady 16 rows/s with a slowdown while the API rate-limited us.
        timeline=[
            (float(t), 16 * t - (8 * (t - 120) if 120 < t < 140 else 0)) for t in range(1, 302)
        ],
    )
    return summary, stats


def test_rendered_run_report_has_the_figures_and_charts(chromium: str, tmp_path: Path) -> None:
    summary, stats = realistic()
    report = tmp_path / "run.html"
    write_run_html(report, summary, stats)

    dom = browse(chromium, tmp_path, "--dump-dom", report.as_uri()).stdout
    page = Page(dom)

    assert page.text("figure-rows") == "Rows 5,000 in 2 files"
    assert page.text("figure-invalid") == "Invalid 182 4% · 182 errors"
    figures = {
        key: page.text(f"figure-{key}").split()[1]
        for key in (
            "created",
            "adopted",
            "updated",
            "unchanged",
            "failed",
            "requests",
            "retries",
            "rate-limited",
        )
    }
    assert figures == {
        "created": "4,512",
        "adopted": "9",
        "updated": "205",
        "unchanged": "61",
        "failed": "31",
        "requests": "4,830",
        "retries": "96",
        "rate-limited": "27",
    }
    assert page.text("figure-duration") == "Duration 5 m 02 s"

    # The charts are SVG the browser parsed: bars with their counts, a drawn throughput line.
    for chart, counts in [
        ("by-rule", {"invalid_date": 120, "missing_required": 45, "invalid_enum": 17}),
        ("by-field", {"dateTime": 120, "patientId": 45, "scope": 17}),
        ("by-error", {"conflict": 19, "validation_error": 9, "server_error": 3}),
    ]:
        svg = page.by_id(f"chart-{chart}")
        assert "chart" in svg["class"].split()
        assert f"chart-{chart}" in svg["class"].split()
        bars = [
            (a["data-label"], int(a["data-count"]))
            for t, a in page.elements
            if t == "g" and "bar" in a.get("class", "").split() and a["data-label"] in counts
        ]
        assert dict(bars) == counts
    paths = [a for t, a in page.elements if t == "path" and a.get("class") == "line"]
    assert len(paths) == 1
    assert paths[0]["d"].startswith("M")
    assert paths[0]["d"].count(" L") >= 100
    assert page.by_id("throughput-chart")["class"] == "chart chart-throughput"
    assert "exports/consents_2021.csv" in page.text("files-table")
    rules = [t for t, _ in page.having_class("rule")]
    assert len(rules) == 182


def test_rendered_validation_report_redacts(chromium: str, tmp_path: Path) -> None:
    summary = summary_of([error(value="Zoë Müller 1961-04-02")], clean={"a.csv": 9})
    report = tmp_path / "validation.html"
    write_validation_html(report, summary, redact=True)
    dom = browse(chromium, tmp_path, "--dump-dom", report.as_uri()).stdout
    page = Page(dom)
    assert page.text("figure-rows") == "Rows 10 in 2 files"
    assert "Müller" not in dom
    assert "invalid_date" in page.text("errors-table")


def test_screenshot_is_a_real_picture(chromium: str, tmp_path: Path) -> None:
    summary, stats = realistic()
    report = tmp_path / "run.html"
    write_run_html(report, summary, stats)
    shot = tmp_path / "run.png"
    browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())

    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000
    width, height, pixels = decode_png(data)
    assert (width, height) == (1280, 2000)
    # Not one flat colour: a blank page would have a handful of distinct pixel values.
    assert len({pixels[i : i + 3] for i in range(0, len(pixels), 3 * 97)}) > 50


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the raw (still row-filtered) bytes of a PNG: enough to tell blank."""
    pos = 8
    idat = b""
    width = height = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)
