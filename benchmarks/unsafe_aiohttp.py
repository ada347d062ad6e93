"""The obvious unsafe import script, the yardstick of bench_sendloop (issue 24 point 1).

Read the canonical CSV with the csv module, build each row's JSON body (the same body
`consent-import run` posts for it), POST it with aiohttp, CONCURRENCY requests in flight.
No ledger, no validation, no lookups, no retries: a crash or a lost answer duplicates or
loses consents. It prints one JSON line: {"rows", "created", "failed", "seconds"}.

    python benchmarks/unsafe_aiohttp.py URL FILE [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import time

import aiohttp


def body(row: dict[str, str]) -> bytes:
    """The row's consent, shaped as the product shapes a canonical row."""
    verification: dict[str, object] = {"verified": row["verified"] == "Y"}
    if row["verifiedWith"]:
        verification["verifiedWith"] = row["verifiedWith"]
    if row["verificationDate"]:
        verification["verificationDate"] = row["verificationDate"] + "T00:00:00Z"
    consent = {
        "patientId": row["patientId"],
        "scope": row["scope"],
        "category": row["category"].split(";"),
        "status": row["status"],
        "dateTime": row["dateTime"],
        "performerId": row["performerId"],
        "organizationId": row["organizationId"],
        "policyUri": row["policyUri"],
        "verification": verification,
        "provision": {
            "type": row["provisionType"],
            "period": {
                "start": row["provisionStart"] + "T00:00:00Z",
                "end": row["provisionEnd"] + "T23:59:59.999000Z",
            },
            "purpose": [{"code": code} for code in row["purpose"].split("|")],
        },
    }
    return json.dumps(consent, separators=(",", ":")).encode()


async def post_all(url: str, path: str, concurrency: int) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        queue: asyncio.Queue[dict[str, str] | None] = asyncio.Queue(maxsize=concurrency * 2)
        counts = {"rows": 0, "created": 0, "failed": 0}
        headers = {"x-api-key": os.environ["CLINIKAPI_API_KEY"], "Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker() -> None:
                while (row := await queue.get()) is not None:
                    async with session.post(f"{url}/v1/consents", data=body(row)) as response:
                        await response.read()
                        counts["created" if response.status < 300 else "failed"] += 1

            started = time.perf_counter()
            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            for row in rows:
                counts["rows"] += 1
                await queue.put(row)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            return {**counts, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("file")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(post_all(args.url, args.file, args.concurrency))))


if __name__ == "__main__":
    main()
