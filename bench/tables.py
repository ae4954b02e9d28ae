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
README = ROOT / "README.md"


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
    ran = result.get("ran")
    command = (f"`{' '.join([ran['script'], *ran['argv']])}` at commit {ran['commit'][:10]}"
               + (" with local changes" if ran.get("dirty") else "") if ran
               else f"`bench/{result['bench']}.py`")
    warm = {f.get("warmup") for f in result["figures"].values()} - {None}
    after = (" after a warm-up" if warm == {True} else " (no warm-up)" if warm == {False}
             else " (after a warm-up unless the figure says otherwise)" if warm
             else " after a warm-up")
    lines = [f"*{command} ({settings}), measured {result['date'][:10]} on "
             f"{where}; median and min-max of {result['repeats']} repeats{after} "
             "(a figure measured once has no range).*", "",
             "| figure | median | min-max |", "| --- | --- | --- |"]
    for label, figure in result["figures"].items():
        unit = figure["unit"]
        spread = ("" if len(figure["values"]) < 2 else
                  f"{_number(figure['min'], unit)} - {_number(figure['max'], unit)}")
        lines.append(f"| {label} | {_number(figure['median'], unit)} | {spread} |")
    return "\n".join(lines) + "\n"


def duplicates_summary(result: dict) -> str:
    """The README's near-duplicates table: precision and recall of each kind of copy at
    the threshold of best F1 that bench_duplicates found."""
    figures = result["figures"]
    threshold = figures["threshold of best F1 (all kinds) on the choice half"]["median"]
    prefix = f"held-out half, cosine >= {threshold:g}, "
    kinds = [label[len(prefix):-len(": recall")] for label in figures
             if label.startswith(prefix) and label.endswith(": recall")]
    lines = [f"At cosine >= {threshold:g}, the threshold of best F1 on one half of the "
             f"originals, measured on the other half ({result['date'][:10]}, "
             f"{result['settings']['copies_per_kind']} copies of each kind in all):", "",
             "| copy | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for measure in ("precision", "recall"):
        lines.append(f"| {measure} | " + " | ".join(
            f"{figures[f'{prefix}{kind}: {measure}']['median']:.3f}" for kind in kinds) + " |")
    return "\n".join(lines) + "\n"


def index_summary(result: dict) -> str:
    """The README's line on the similarity index at scale (bench_index)."""
    f = {label: figure["median"] for label, figure in result["figures"].items()}
    return (f"{result['settings']['rows']:,} x {result['settings']['dim']} "
            f"({result['date'][:10]}): built in {f['build']:.0f} s at "
            f"{f['build, peak memory']:.1f} GB peak memory, recall@10 "
            f"{f['recall@10 against exact search']:.3f} against exact search, "
            f"{f['queries/s, 1,000 in a batch']:,.0f} queries/s in batches; 1 % more rows "
            f"cost {f['growth / build (goal <= 0.05)']:.3f} of the build.\n")


def label_issues_summary(result: dict) -> str:
    """The README's line on label issues (bench_label_issues)."""
    f = result["figures"]
    [top] = [label for label in f if label.startswith("precision among the top k")]
    cell = lambda label: f"{f[label]['median']:.3f} ({f[label]['min']:.3f}-{f[label]['max']:.3f})"  # noqa: E731
    return (f"{top}: {cell(top)}; AUROC of the label quality score "
            f"{cell('AUROC of the label quality score')} against "
            f"{cell('AUROC of confidence only (baseline)')} for confidence alone (median and "
            f"range of {result['repeats']} draws of the flips, {result['date'][:10]}).\n")


def extract_summary(result: dict) -> str:
    """The README's table of CPU extraction speed (bench_extract): per trunk, images/s with
    the defaults, what the defaults chose, and how far that is from fp32 contiguous (the
    path before), from the fastest forward and from the fastest in the precision the
    defaults kept; and how fast decoding alone runs in one process."""
    f, m = result["figures"], result["machine"]
    trunks = list(dict.fromkeys(label.split(": ")[0] for label in f))
    lines = [f"On {m['cpu']} ({m['cores']} cores, {result['date'][:10]}; median of "
             f"{result['repeats']} repeats):", "",
             "| trunk | extraction, defaults | defaults computed in | x fp32 contiguous forward "
             "| of the fastest forward | of the fastest in that precision | decoding alone |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for trunk in trunks:
        [made] = [label.split("default precision (")[1].split(") features")[0]
                  for label in f if label.startswith(f"{trunk}: default precision (")]
        lines.append(
            f"| {trunk} | {f[f'{trunk}: extract, defaults']['median']:.1f} img/s | {made} "
            f"| {f[f'{trunk}: extract, defaults / fp32 contiguous forward']['median']:.2f}x "
            f"| {f[f'{trunk}: extract, defaults / fastest forward (goal >= 0.9)']['median']:.2f} "
            f"| {kept(f, trunk)} | {decoded(f, trunk)} |")
    return "\n".join(lines) + "\n"


def kept(f: dict, trunk: str) -> str:
    label = f"{trunk}: extract, defaults / fastest forward in the precision they kept"
    return f"{f[label]['median']:.2f}" if label in f else "-"  # results from before the figure


def decoded(f: dict, trunk: str) -> str:
    label = f"{trunk}: decoding alone, one process"
    return f"{f[label]['median']:,.0f} img/s" if label in f else "-"


# README blocks written from a bench's results: <!-- bench:NAME --> ... <!-- /bench:NAME -->
README_BLOCKS = {"bench_extract": extract_summary,
                 "bench_duplicates": duplicates_summary,
                 "bench_label_issues": label_issues_summary,
                 "bench_index_5000000": index_summary}


def readme_block(name: str, text: str) -> str:
    return f"<!-- bench:{name} -->\n{text}<!-- /bench:{name} -->"


def fill_readme(readme: str) -> str:
    """``readme`` with every generated block rewritten from bench/results."""
    for name, render in README_BLOCKS.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start not in readme:
            continue
        result = json.loads((RESULTS / f"{name}.json").read_text())
        head, rest = readme.split(start, 1)
        readme = head + readme_block(name, render(result)) + rest.split(end, 1)[1]
    return readme


def main() -> None:
    GENERATED.mkdir(exist_ok=True)
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        target = GENERATED / f"{result['bench']}.md"
        target.write_text(table(result))
        print(f"written: {target.relative_to(ROOT)}")
    readme = README.read_text()
    filled = fill_readme(readme)
    if filled != readme:
        README.write_text(filled)
        print(f"written: {README.relative_to(ROOT)} (its bench blocks)")


if __name__ == "__main__":
    main()
