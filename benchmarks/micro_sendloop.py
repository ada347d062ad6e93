"""Per-row costs of the send loop's pieces, in process, each alone (µs a call).

What a row pays on the happy path that the unsafe script does not, piece by piece, so an
optimization can be priced before it is made (issue 24 point 1):

- httpx's layer around our transport: build_request + Response wrapping + aread, against
  the bytes `_http11._request_bytes` writes;
- tenacity's AsyncRetrying for one successful attempt, against a plain loop;
- the body's field hashes (`Row.field_hashes`: parse the body JSON again, repr, SHA-256
  per field), against hashing the dict already in hand;
- pydantic's model_dump_json of a canonical row's model, against json.dumps of its dict;
- anyio.Event against asyncio.Event (AsyncLedger makes one a write), asyncio.timeout.

    python benchmarks/micro_sendloop.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

from importer._rows import body_field_hashes
from importer.api._retry import retrying

BODY = (
    b'{"patientId":"pt_0000001","scope":"treatment","category":["hipaa-notice"],"status":'
    b'"active","dateTime":"2023-02-02T01:01:00Z","performerId":"pt_0000001","organizationId"'
    b':"org_main","policyUri":"https://clinic.example/policies/privacy-v3","verification":'
    b'{"verified":true,"verifiedWith":"pt_0000001","verificationDate":"2023-02-02T00:00:00Z"}'
    b',"provision":{"type":"permit","period":{"start":"2023-02-02T00:00:00Z","end":'
    b'"2030-12-31T23:59:59.999000Z"},"purpose":[{"code":"TREAT"}]}}'
)
HEADERS = {
    "x-api-key": "clk_test_benchmark00001234",
    "Content-Type": "application/json",
    "Accept": "application/fhir+json",
    "User-Agent": "consent-import/0.1.0",
}
ANSWER_HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-ratelimit-limit", b"100000000"),
    (b"x-ratelimit-remaining", b"99999999"),
    (b"x-ratelimit-reset", b"1765000000"),
    (b"x-request-id", b"req_0123456789abcdef"),
    (b"content-length", b"600"),
]


def per_call(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


async def per_await(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - started) / n * 1e6


async def measure(n: int) -> None:
    client = httpx.AsyncClient()
    url = httpx.URL("http://127.0.0.1:8800/v1/consents")
    answer = BODY.replace(b"{", b'{"id":"consent_0123456789abcdef01234567",', 1)

    def httpx_layer() -> None:
        request = client.build_request("POST", url, content=BODY, headers=HEADERS)
        response = httpx.Response(
            201, headers=ANSWER_HEADERS, stream=httpx.ByteStream(answer), request=request
        )
        response.read()
        dict(response.headers)

    head = b"".join(
        [b"POST /v1/consents HTTP/1.1\r\nHost: 127.0.0.1:8800\r\n"]
        + [f"{k}: {v}\r\n".encode() for k, v in HEADERS.items()]
    )

    def raw_bytes() -> None:
        b"".join([head, b"Content-Length: ", str(len(BODY)).encode(), b"\r\n\r\n", BODY])
        {k.decode(): v.decode() for k, v in ANSWER_HEADERS}

    print(f"httpx request+response objects   {per_call(httpx_layer, n):7.1f} µs")
    print(f"prebuilt request head bytes       {per_call(raw_bytes, n):7.1f} µs")

    async def tenacity_once() -> None:
        async for attempt in retrying(attempts=5):
            with attempt:
                pass

    async def plain_once() -> None:
        for _ in range(5):
            try:
                return
            except ValueError:
                continue

    print(f"tenacity, one successful attempt  {await per_await(tenacity_once, n):7.1f} µs")
    print(f"plain loop, one attempt           {await per_await(plain_once, n):7.1f} µs")

    text = BODY.decode()
    parsed = json.loads(text)
    compact = (",", ":")
    sync: list[tuple[str, Callable[[], Any]]] = [
        ("field hashes from the JSON text", lambda: body_field_hashes(json.loads(text))),
        ("field hashes from the dict", lambda: body_field_hashes(parsed)),
        ("json.loads of the body", lambda: json.loads(text)),
        ("sha256 of the body", lambda: hashlib.sha256(BODY).hexdigest()),
        ("json.dumps of the dict", lambda: json.dumps(parsed, separators=compact)),
    ]
    for label, fn in sync:
        show(label, per_call(fn, n))

    async def anyio_event() -> None:
        event = anyio.Event()
        event.set()
        await event.wait()

    async def asyncio_event() -> None:
        event = asyncio.Event()
        event.set()
        await event.wait()

    async def one_timeout() -> None:
        async with asyncio.timeout(30):
            pass

    print(f"anyio.Event set+wait              {await per_await(anyio_event, n):7.1f} µs")
    print(f"asyncio.Event set+wait            {await per_await(asyncio_event, n):7.1f} µs")
    print(f"asyncio.timeout enter+exit        {await per_await(one_timeout, n):7.1f} µs")
    await client.aclose()


def model_costs(n: int) -> None:
    from importer.intake._models import ConsentIn

    model = ConsentIn.model_validate(json.loads(BODY))
    dump = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    show(
        "pydantic model_dump_json",
        per_call(lambda: model.model_dump_json(by_alias=True, exclude_none=True), n),
    )
    show("pydantic model_validate (dict)", per_call(lambda: ConsentIn.model_validate(dump), n))


def show(label: str, micros: float) -> None:
    print(f"{label:<34}{micros:7.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(measure(args.n))
    model_costs(args.n)


if __name__ == "__main__":
    main()
