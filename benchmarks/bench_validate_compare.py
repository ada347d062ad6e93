"""`validate` against frictionless, and what Arrow's CSV reader can do for us (issue 24
point 2).

Timing (each in its own process, wall and peak RSS, on the canonical file of --rows):

- `consent-import validate FILE --quiet` (the product: read, map, validate every row);
- `frictionless.validate(FILE)` (schema inferred from a sample, every row checked), when
  frictionless is installed;
- reading alone, every cell as text, no NA: pandas' C parser in chunks (what our reader
  does), pandas `engine="pyarrow"`, and `pyarrow.csv.read_csv` with every column a string.

Capabilities (`--matrix`, small files in a temp directory): for each thing our reader
must do, whether pandas' pyarrow engine and pyarrow.csv read the file to the same cells as
the csv module (the reference): cp1252, UTF-16 with BOM, UTF-8 BOM, a `sep=;` first line,
quoted newlines, every cell as text (leading zeros, NA, TRUE, 1e5, blanks), blank rows
kept in the count.

    python benchmarks/bench_validate_compare.py [--rows 1000000] [--matrix-only]

Mind pyarrow: once installed, pandas 3 stores `str` columns as Arrow strings in the
product too, which made `validate` of 1M rows 1.6x slower and 120 MB bigger here. Time the
product without it, and the Arrow legs (and the capabilities) with it.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, canonical_csv, cli

HERE = Path(__file__).resolve().parent


# --- children: each runs in its own process under peak_rss.py -----------------------------


def child_frictionless(path: str) -> str:
    import os

    import frictionless

    # frictionless refuses an absolute path as "not safe": give it the name, from its folder.
    os.chdir(Path(path).parent)
    report = frictionless.validate(Path(path).name)
    task = report.tasks[0]
    if task.errors and task.errors[0].type in ("resource-error", "source-error", "scheme-error"):
        raise RuntimeError(task.errors[0].message)
    return f"valid={report.valid} rows={task.stats.get('rows')} errors={len(task.errors)}"


def child_pandas_c(path: str) -> str:
    import pandas as pd

    rows = 0
    with pd.read_csv(
        path,
        dtype=str,
        na_filter=False,
        keep_default_na=False,
        skip_blank_lines=False,
        engine="c",
        chunksize=100_000,
    ) as reader:
        for frame in reader:
            rows += len(frame)
    return f"rows={rows}"


def child_pandas_arrow(path: str) -> str:
    import pandas as pd

    # pandas refuses na_filter with this engine; keep_default_na=False is what is left.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")
    return f"rows={len(frame)}"


def child_arrow(path: str) -> str:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    with open(path, encoding="utf-8", newline="") as handle:
        names = next(csv.reader(handle))
    rows = 0
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    with pacsv.open_csv(path, convert_options=convert) as reader:
        for batch in reader:
            rows += batch.num_rows
    return f"rows={rows}"


CHILDREN: dict[str, Callable[[str], str]] = {
    "frictionless": child_frictionless,
    "pandas-c": child_pandas_c,
    "pandas-pyarrow": child_pandas_arrow,
    "pyarrow.csv": child_arrow,
}


def run_child(name: str, path: Path) -> tuple[float, int, str]:
    """(wall s, peak RSS MB, its one line) of CHILDREN[name] in its own process."""
    started = time.perf_counter()
    proc = subprocess.run(
        [
            *(sys.executable, str(HERE / "peak_rss.py"), "-m", "bench_validate_compare"),
            *("--child", name, str(path)),
        ],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{name} failed: {proc.stderr[-1500:]}")
    peak = int(proc.stderr.strip().splitlines()[-1].split("=")[1])
    return wall, peak, proc.stdout.strip().splitlines()[-1]


def timing(rows: int) -> None:
    import os

    path = canonical_csv(rows)
    arrow_strings = importlib.util.find_spec("pyarrow") is not None
    print(
        f"validate compare: {rows:,} rows ({path.stat().st_size / 1e6:.0f} MB), "
        f"pandas str storage {'pyarrow' if arrow_strings else 'python'}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    seconds, peak = cli("validate", str(path), "--quiet")
    ours = seconds
    print(f"  consent-import validate {seconds:7.1f} s  peak RSS {peak:5d} MB")
    names = ["pandas-c", "pandas-pyarrow", "pyarrow.csv"]
    if importlib.util.find_spec("frictionless") is not None:
        names.insert(0, "frictionless")
    else:
        print("  frictionless: not installed (pip install frictionless)")
    for name in names:
        arrow = name in ("pandas-pyarrow", "pyarrow.csv")
        if arrow and importlib.util.find_spec("pyarrow") is None:
            print(f"  {name}: pyarrow not installed")
            continue
        wall, peak, line = run_child(name, path)
        extra = f"  (product / it: {ours / wall:.2f})" if name == "frictionless" else ""
        read = "validate" if name == "frictionless" else "read only"
        print(f"  {name:<23} {wall:7.1f} s  peak RSS {peak:5d} MB  {read}: {line}{extra}")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


# --- capabilities -------------------------------------------------------------------------

TEXT_ROWS = [
    ["id", "code", "flag", "note"],
    ["007", "NA", "TRUE", "1e5"],
    ["", "null", "N/A", " padded "],
]
CASES: dict[str, tuple[bytes, str, str]] = {
    # name: (file bytes, encoding our reader detects, delimiter)
    "every cell as text (007, NA, TRUE, 1e5, blanks)": (
        "".join(",".join(r) + "\r\n" for r in TEXT_ROWS).encode(),
        "utf-8",
        ",",
    ),
    "cp1252 (é, €, ’)": ("id,name\r\n1,Renée €5 l’été\r\n".encode("cp1252"), "cp1252", ","),
    "UTF-16 with BOM": ("id,name\r\n1,Zoë\r\n".encode("utf-16"), "utf-16", ","),
    "UTF-8 BOM": ("\ufeffid,name\r\n1,Zoë\r\n".encode(), "utf-8-sig", ","),
    "sep=; first line (Excel)": (b"sep=;\r\nid;name\r\n1;A\r\n", "utf-8", ";"),
    "quoted newline in a cell": (b'id,note\r\n1,"two\r\nlines"\r\n2,x\r\n', "utf-8", ","),
    "blank row kept in the count": (b"id,name\r\n1,A\r\n\r\n3,C\r\n", "utf-8", ","),
    "doubled quotes, delimiter in quotes": (
        b'id,note\r\n1,"say ""hi"", then go"\r\n',
        "utf-8",
        ",",
    ),
    "short row (we flag short_row and go on)": (b"id,a,b\r\n1,x\r\n2,y,z\r\n", "utf-8", ","),
    "cut in a quote (both silent; we flag truncated_file)": (
        b'id,a\r\n1,x\r\n2,"y\r\n',
        "utf-8",
        ",",
    ),
}


def reference(data: bytes, encoding: str, delimiter: str) -> list[list[str]]:
    """What our reader yields: every record's cells as text (blank rows as [])."""
    text = data.decode(encoding)
    if text.startswith("sep="):
        text = text.split("\n", 1)[1]
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    return [r if any(r) else [] for r in records[1:]]


def _skip(path: Path, encoding: str) -> int:
    """1 when the file starts with Excel's `sep=` line (our reader finds it itself and
    would tell either reader to skip it)."""
    return int(path.read_bytes().decode(encoding).startswith("sep="))


def blank_as_empty(rows: list[list[str]]) -> list[list[str]]:
    """A record of empty cells is a blank row, whichever way a reader gives it."""
    return [r if any(r) else [] for r in rows]


def by_pandas_arrow(path: Path, encoding: str, delimiter: str) -> list[list[str]]:
    import pandas as pd

    # pandas refuses na_filter and skip_blank_lines=False with this engine.
    frame = pd.read_csv(
        path,
        sep=delimiter,
        dtype=str,
        keep_default_na=False,
        encoding=encoding,
        skiprows=_skip(path, encoding),
        engine="pyarrow",
    )
    return [list(r) for r in frame.itertuples(index=False)]


def by_arrow(path: Path, encoding: str, delimiter: str) -> list[list[str]]:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    skip = _skip(path, encoding)
    text = path.read_bytes().decode(encoding)
    if skip:
        text = text.split("\n", 1)[1]
    names = next(csv.reader(io.StringIO(text), delimiter=delimiter))
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(encoding=encoding, skip_rows=skip),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [list(r) for r in zip(*columns, strict=True)]


def matrix() -> None:
    if importlib.util.find_spec("pyarrow") is None:
        print("capabilities: pyarrow not installed (pip install pyarrow)")
        return
    readers: dict[str, Callable[[Path, str, str], list[list[str]]]] = {
        "pandas engine=pyarrow": by_pandas_arrow,
        "pyarrow.csv (all string)": by_arrow,
    }
    print("capabilities: same cells as the csv module? (our reader's needs)")
    with tempfile.TemporaryDirectory() as name:
        for case, (data, encoding, delimiter) in CASES.items():
            path = Path(name) / "case.csv"
            path.write_bytes(data)
            want = blank_as_empty(reference(data, encoding, delimiter))
            for label, read in readers.items():
                try:
                    got: Any = blank_as_empty(read(path, encoding, delimiter))
                    verdict = "ok" if got == want else f"DIFFERS: {got!r} != {want!r}"
                except Exception as exc:  # the verdict is what it raised
                    verdict = f"FAILS: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                print(f"  {case:<48} {label:<25} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--matrix-only", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(CHILDREN[args.child[0]](args.child[1]))
        return
    matrix()
    if not args.matrix_only:
        timing(args.rows)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
