"""The docs' benchmark tables, written from what the benchmarks measured.

    .venv/bin/python bench/tables.py          # or: make docs-tables

Reads every ``bench/results/<bench>.json`` (written by the benchmarks through
``bench/harness.py``) and writes ``docs/generated/<bench>.md``: the machine, the
date, the settings and one row per figure (median, min-max, repeats), which
``docs/benchmarks.md`` includes. A figure in the docs is therefore always one a
benchmark wrote, never one typed by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GENERATED = ROOT / "docs" / "generated"


def _number(value: float, unit: str) -> str:
    if unit in ("", "x") or abs(value) < 10:
        text = f"{value:.3f}"
    else:
        text = f"{value:,.1f}"
    return f"{text} {unit}".strip() if unit not in ("", "x") else (text + ("x" if unit == "x" else ""))


def table(result: dict) -> str:
    m = result["machine"]
    where = f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}"
    if m.get("gpu"):
        where += f", {m['gpu']}"
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    lines = [f"*`bench/{result['bench']}.py` ({settings}), measured {result['date'][:10]} on "
             f"{where}; median and min-max of {result['repeats']} repeats after a warm-up "
             "(a figure measured once has no range).*", "",
             "| figure | median | min-max |", "| --- | --- | --- |"]
    for label, figure in result["figures"].items():
        unit = figure["unit"]
        spread = ("" if len(figure["values"]) < 2 else
                  f"{_number(figure['min'], unit)} - {_number(figure['max'], unit)}")
        lines.append(f"| {label} | {_number(figure['median'], unit)} | {spread} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    GENERATED.mkdir(exist_ok=True)
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        target = GENERATED / f"{result['bench']}.md"
        target.write_text(table(result))
        print(f"written: {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
