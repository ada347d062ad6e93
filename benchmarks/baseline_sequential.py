"""The baseline for bench_import (b): one request at a time, no pool, no ledger.

A plain loop a user might write: read the CSV, POST each row, wait for the answer.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import httpx
from common import KEY


def post_sequentially(url: str, source: Path, limit: int) -> float:
    """POST the first `limit` rows one at a time; return rows per second."""
    with (
        source.open(newline="", encoding="utf-8") as handle,
        httpx.Client(base_url=url, headers={"x-api-key": KEY}) as client,
    ):
        rows = [row for _, row in zip(range(limit), csv.DictReader(handle), strict=False)]
        started = time.perf_counter()
        for row in rows:
            body = {
                "patientId": row["patientId"],
                "scope": row["scope"],
                "category": row["category"].split(";"),
                "status": row["status"],
                "dateTime": row["dateTime"],
            }
            client.post("/v1/consents", json=body).raise_for_status()
        return len(rows) / (time.perf_counter() - started)
