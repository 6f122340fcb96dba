"""What every benchmark shares: one row format, the machine description, and
the combined table that ``benchmarks/run`` prints.

A benchmark script adopts it in three lines::

    from benchmarks.common import Row, add_json_flag, print_rows
    add_json_flag(parser)                        # gives the script --json
    print_rows(rows, as_json=args.json)          # a Markdown table, or rows for benchmarks/run

With ``--json`` each row is one line ``BENCH-ROW {...}`` on stdout, so other
output (logs, progress) may share the stream. ``benchmarks/run`` passes
``--json`` to every script that calls ``add_json_flag`` and then runs
``python -m benchmarks.common combine RESULTS_DIR``. A script that does not
(yet) speak the row format still shows up: its Markdown tables are read
cell by cell, anything else is printed as it came.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Optional

ROW_PREFIX = "BENCH-ROW "
MACHINE_FILE = "machine.json"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    benchmark: str                       # the script: generation, metrics, analysis, memory, ...
    case: str                            # what ran, e.g. "llamacpp sequential"
    size: str = ""                       # the workload, e.g. "32 stories x 128 tokens"
    seconds: Optional[float] = None      # wall clock of the case
    throughput: Optional[float] = None   # in `unit`
    unit: str = ""                       # e.g. "tokens/s", "stories/s"
    peak_rss_mb: Optional[float] = None  # of the process that ran the case
    note: str = ""


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help=f"print rows as '{ROW_PREFIX.strip()} {{...}}' lines for benchmarks/run")


def print_rows(rows: list[Row], as_json: bool = False, title: str = "") -> None:
    if as_json:
        for row in rows:
            print(ROW_PREFIX + json.dumps(asdict(row)), flush=True)
        return
    if title:
        print(f"# {title}\n")
    print(markdown_table(rows), flush=True)


def print_benchmark(name: str, rows: list[Row], rounds: int, as_json: bool = False) -> None:
    """A benchmark's rows under a heading with the time, the cores and the rounds (rows only with --json)."""
    if not as_json:
        print(f"# {name} benchmark, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} cores, "
              f"median of {rounds} round(s)\n")
    print_rows(rows, as_json=as_json)


def _number(value: Optional[float], digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| benchmark | case | size | seconds | throughput | peak RSS MB | note |",
             "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        throughput = f"{_number(row.throughput, 1)} {row.unit}".strip() if row.throughput is not None else ""
        cells = [row.benchmark, row.case, row.size, _number(row.seconds, 1), throughput,
                 _number(row.peak_rss_mb, 0), row.note]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------- machine

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return math.nan


def _os_name() -> str:
    try:
        release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        name = release.get("PRETTY_NAME", "").strip('"')
    except OSError:
        name = ""
    return f"{name} ({platform.system()} {platform.release()})" if name else platform.platform()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpu() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True, check=False)
    return ", ".join(result.stdout.split("\n")).strip(", ") or "none"


def _git_commit() -> str:
    result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or "unknown"


def machine_description() -> list[tuple[str, str]]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("RAM", f"{_ram_gb():.1f} GB"),
        ("GPU", _gpu()),
        ("OS", _os_name()),
        ("python", platform.python_version()),
        ("torch", _version("torch")),
        ("llama-cpp-python", _version("llama_cpp_python")),
        ("transformers", _version("transformers")),
        ("harness commit", _git_commit()),
        ("load average (1 min) at the start", f"{os.getloadavg()[0]:.2f}"),
    ]


# ---------------------------------------------------------------- combine

def rows_from_output(benchmark: str, text: str) -> tuple[list[Row], list[str]]:
    """Rows of one script's stdout, and the lines that were not rows.

    ``BENCH-ROW`` lines are taken as they are; the rows of a Markdown table are
    mapped by their headers (seconds, a rate such as tokens/s, peak RSS,
    counts) so scripts that predate the row format still land in the table.
    """
    rows, rest, header = [], [], None
    for line in text.splitlines():
        if line.startswith(ROW_PREFIX):
            rows.append(Row(**{k: v for k, v in json.loads(line[len(ROW_PREFIX):]).items()
                               if k in {f.name for f in fields(Row)}}))
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            header = None
            rest.append(line)
        elif header is None:
            header = [cell.lower() for cell in cells]
        elif all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            continue
        else:
            rows.append(_row_from_cells(benchmark, header, cells))
    return rows, rest


def _float(text: str) -> Optional[float]:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _row_from_cells(benchmark: str, header: list[str], cells: list[str]) -> Row:
    # A bare number in the first column (say max_concurrency 4) needs its header to be read.
    row = Row(benchmark=benchmark, case=f"{header[0]} {cells[0]}" if _float(cells[0]) is not None else cells[0])
    size, note = [], []
    for name, cell in zip(header[1:], cells[1:]):
        value = _float(cell)
        if name == "seconds" and value is not None:
            row.seconds = value
        elif "rss" in name and value is not None:
            row.peak_rss_mb = value
        elif name.endswith("/s") and value is not None and row.throughput is None:
            row.throughput, row.unit = value, name
        elif name in ("stories", "tokens", "settings", "processed", "size", "participants", "ratings"):
            size.append(f"{cell} {name}" if value is not None else cell)
        else:
            note.append(f"{name} {cell}")
    row.size, row.note = ", ".join(size), "; ".join(note)
    return row


def _names_in_run_order(results: Path) -> list[str]:
    order = results / "order"  # benchmarks/run appends each name as it starts it
    if order.exists():
        return [name for name in order.read_text().split() if (results / f"{name}.status").exists()]
    return [path.stem for path in sorted(results.glob("*.status"), key=lambda p: p.stat().st_mtime)]


def combine(results: Path) -> str:
    """The report of one ``benchmarks/run``: machine, one table, then anything that was not a row.

    The machine description is the one saved when the run started (``machine``
    command), so the date and load average are those of the run.
    """
    saved = results / MACHINE_FILE
    machine = [tuple(item) for item in json.loads(saved.read_text())] if saved.exists() else machine_description()
    lines = ["# Benchmarks", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine]
    lines.append(f"- **load average (1 min) at the end**: {os.getloadavg()[0]:.2f}")
    rows: list[Row] = []
    leftovers: list[str] = []
    for name in _names_in_run_order(results):
        code, elapsed = (results / f"{name}.status").read_text().split()
        script_rows, rest = rows_from_output(name, (results / f"{name}.out").read_text(errors="replace"))
        rows += script_rows
        rest = [line for line in rest if line.strip()]
        if code != "0":
            error = (results / f"{name}.err").read_text(errors="replace").strip().splitlines()[-15:]
            leftovers += ["", f"## {name}: FAILED (exit {code} after {elapsed} s)", "", "```", *error, "```"]
        elif rest:
            leftovers += ["", f"## {name}: other output ({elapsed} s)", "", "```", *rest, "```"]
    missing = results / "missing"
    lines += ["", markdown_table(rows)]
    if missing.exists():
        lines += ["", "Not run (script not there yet): " + ", ".join(missing.read_text().split())]
    return "\n".join(lines + leftovers) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="For benchmarks/run: describe the machine (saved in RESULTS when "
                                                 "given), or combine the outputs in RESULTS into one report.")
    parser.add_argument("command", choices=["combine", "machine"])
    parser.add_argument("results", nargs="?", type=Path, help="the folder benchmarks/run writes")
    args = parser.parse_args()
    if args.command == "machine":
        machine = machine_description()
        if args.results is not None:
            (args.results / MACHINE_FILE).write_text(json.dumps(machine))
        print("\n".join(f"{key}: {value}" for key, value in machine))
    else:
        if args.results is None or not args.results.is_dir():
            parser.error(f"combine needs the results folder of benchmarks/run, got {args.results}")
        print(combine(args.results), end="")


if __name__ == "__main__":
    main()
