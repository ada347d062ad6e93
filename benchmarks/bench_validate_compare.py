"""`validate` against frictionless, and what Arrow's CSV reader can do for us (issue 24
point 2).

Timing (each in its own process, wall and peak RSS, on the canonical file of --rows),
the product and frictionless alternated --repeat times, with the date and the load:

- `consent-import validate FILE --quiet`: the product as shipped (pyarrow installed: the
  reader takes Arrow's parser for a well-formed UTF-8 file like this one);
- the same with the reader held to pandas' C parser (what reads cp1252, UTF-16 and
  irregular files), to show what Arrow's parser gives;
- the product as a default install runs it (no `arrow` extra: pyarrow cannot be imported,
  so pandas runs without it and the reader takes the C parser);
- with `--before TREE`, the product of another checkout (its own `.venv`, e.g. a worktree
  of main) in the same alternation, for before/after figures side by side;
- `frictionless.validate(FILE)` (schema inferred from a sample, every row checked), when
  frictionless is installed; the ratio product / frictionless is the issue's figure
  (target: at most 1/8 = 0.125);
- reading alone, every cell as text, no NA: pandas' C parser in chunks, pandas
  `engine="pyarrow"`, and `pyarrow.csv` streaming with every column a string.

Capabilities (small files in a temp directory): for each thing our reader must do,
whether pandas' pyarrow engine and pyarrow.csv read the file to the same cells as the csv
module (the reference), and which of our two readers `open_table` takes for it (Arrow's
parser only where it reads the file as the C parser does; tests/test_reader_arrow.py
checks that the two agree).

    python benchmarks/bench_validate_compare.py [--rows 1000000] [--repeat 2] [--matrix-only]
        [--before TREE]
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# (`common` imports the product, hence pandas and pyarrow: only the parent imports it, so
# that a child, frictionless's above all, starts with nothing but what it needs itself;
# it once carried pandas' import, about 1 s and 120 MB, into frictionless's figures.)


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


def child_product_c(path: str) -> str:
    from importer.cli._main import main
    from importer.intake import _reader

    _reader._CsvTable.arrow = False  # pandas' C parser for every file
    try:
        main(["validate", path, "--quiet"])
    except SystemExit as exc:
        return f"exit={exc.code}"
    return "exit=0"


def child_product_default(path: str) -> str:
    # A default install: no pyarrow (an entry of None makes `import pyarrow...` fail).
    for name in ("pyarrow", "pyarrow.csv", "pyarrow.compute", "pyarrow.lib"):
        sys.modules[name] = None  # type: ignore[assignment]
    from importer.cli._main import main

    try:
        main(["validate", path, "--quiet"])
    except SystemExit as exc:
        return f"exit={exc.code}"
    return "exit=0"


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
    "product-c-parser": child_product_c,
    "product-default": child_product_default,
    "frictionless": child_frictionless,
    "pandas-c": child_pandas_c,
    "pandas-pyarrow": child_pandas_arrow,
    "pyarrow.csv": child_arrow,
}


def _measured(argv: list[str], cwd: Path, ok: tuple[int, ...], what: str) -> tuple[float, int, str]:
    """(wall s, peak RSS MB as peak_rss.py reports it, stdout) of `argv`, which starts
    with peak_rss.py; raises if it exits with other than `ok`."""
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=900)
    wall = time.perf_counter() - started
    if proc.returncode not in ok:
        raise RuntimeError(f"{what} failed: {proc.stderr[-1500:]}")
    return wall, int(proc.stderr.strip().splitlines()[-1].split("=")[1]), proc.stdout


def run_child(name: str, path: Path) -> tuple[float, int, str]:
    """(wall s, peak RSS MB, its one line) of CHILDREN[name] in its own process."""
    wall, peak, out = _measured(
        [
            *(sys.executable, str(HERE / "peak_rss.py"), "-m", "bench_validate_compare"),
            *("--child", name, str(path)),
        ],
        HERE,
        (0,),
        name,
    )
    return wall, peak, out.strip().splitlines()[-1]


def _load() -> str:
    import os

    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _children_cpu() -> float:
    """User and system CPU seconds of the children waited for so far (a measure the
    machine's load moves less than wall time: the legs' CPU compare on a busy machine)."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _span(values: list[float], unit: str = "s", digits: int = 1) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}{unit}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}{unit}"


def run_before(tree: Path, path: Path) -> tuple[float, int]:
    """(wall s, peak RSS MB) of `consent-import validate` by another checkout's product."""
    wall, peak, _ = _measured(
        [
            *(str(tree / ".venv" / "bin" / "python"), str(tree / "benchmarks" / "peak_rss.py")),
            *("-m", "importer", "validate", str(path), "--quiet"),
        ],
        tree,
        (0, 1),
        f"before ({tree})",
    )
    return wall, peak


def timing(rows: int, repeat: int, before: Path | None = None) -> None:
    import datetime

    from common import canonical_csv, cli

    path = canonical_csv(rows)
    arrow = importlib.util.find_spec("pyarrow") is not None
    friction = importlib.util.find_spec("frictionless") is not None
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"validate compare, {now}: {rows:,} rows ({path.stat().st_size / 1e6:.0f} MB), "
        f"pyarrow {'installed' if arrow else 'NOT installed'}, load average {_load()}"
    )
    if not friction:
        print("  frictionless: not installed (pip install -e '.[bench]')")
    legs = [
        *(["before"] if before else []),
        "product",
        "product-c-parser",
        "product-default",
        *(["frictionless"] if friction else []),
    ]
    walls: dict[str, list[float]] = {leg: [] for leg in legs}
    peaks: dict[str, list[float]] = {leg: [] for leg in legs}
    cpus: dict[str, list[float]] = {leg: [] for leg in legs}
    for turn in range(repeat):
        for leg in legs:
            used = _children_cpu()
            if leg == "product":
                wall, peak = cli("validate", str(path), "--quiet")
                line = ""
            elif leg == "before" and before is not None:
                wall, peak = run_before(before, path)
                line = str(before)
            else:
                wall, peak, line = run_child(leg, path)
            cpu = _children_cpu() - used
            walls[leg].append(wall)
            peaks[leg].append(peak)
            cpus[leg].append(cpu)
            print(
                f"  {turn + 1}. {leg:<17} {wall:6.1f} s  CPU {cpu:5.1f} s  peak RSS {peak:4d} MB"
                f"  {line}  (load {_load()})"
            )
    for leg in legs:
        print(
            f"  {leg:<20} {_span(walls[leg])}  CPU {_span(cpus[leg])}  "
            f"peak RSS {_span(peaks[leg], ' MB', 0)}"
        )
    if friction:
        # Alternated runs: each product run against the frictionless run beside it.
        def ratios(leg: str, by: dict[str, list[float]] = walls) -> str:
            pairs = zip(by[leg], by["frictionless"], strict=True)
            return _span([p / f for p, f in pairs], "", 3)

        print(
            f"  product / frictionless: {ratios('product')} (target <= 0.125); "
            f"with the C parser: {ratios('product-c-parser')}; "
            f"default install: {ratios('product-default')}"
            + (f"; before: {ratios('before')}" if before else "")
        )
        print(
            f"  the same by CPU: {ratios('product', cpus)}; with the C parser: "
            f"{ratios('product-c-parser', cpus)}; default install: "
            f"{ratios('product-default', cpus)}"
            + (f"; before: {ratios('before', cpus)}" if before else "")
        )
    for name in ["pandas-c", "pandas-pyarrow", "pyarrow.csv"]:
        if name != "pandas-c" and not arrow:
            print(f"  {name}: pyarrow not installed")
            continue
        wall, peak, line = run_child(name, path)
        print(f"  {name:<20} {wall:6.1f} s  peak RSS {peak:4d} MB  read only: {line}")
    print(f"load average at end {_load()}")


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


def ours(path: Path) -> str:
    """Which of our readers `open_table` takes for the file."""
    from importer._errors import InputError
    from importer.intake._reader import _CsvTable, open_table

    try:
        table = open_table(path)
        for _ in table.chunks():
            pass
    except InputError as exc:
        return f"refused: {str(exc)[:60]}"
    arrow = isinstance(table, _CsvTable) and table._plan is not None
    return "Arrow's parser" if arrow else "pandas' C parser"


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
            print(f"  {case:<48} {'our reader takes':<25} {ours(path)}")
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
    parser.add_argument("--repeat", type=int, default=2, help="alternated runs of each leg")
    parser.add_argument("--matrix-only", action="store_true")
    parser.add_argument(
        "--before", type=Path, help="a checkout (with its .venv) whose product is timed too"
    )
    parser.add_argument("--child", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(CHILDREN[args.child[0]](args.child[1]))
        return
    matrix()
    if not args.matrix_only:
        timing(args.rows, args.repeat, args.before)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
