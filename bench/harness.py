"""What every benchmark shares: warm-up, repeats, median and spread, the machine, a JSON file.

A benchmark measures each figure ``repeats`` times (at least 3) after a warm-up
run that is thrown away, and reports the median with the minimum and maximum;
a ratio of two figures is taken per repeat (the i-th of one over the i-th of
the other) and reported the same way. The machine (CPU model, cores, threads,
torch, GPU) and the settings travel with the figures into
``bench/results/<bench>.json``, from which ``bench/tables.py`` writes the docs'
tables: no figure in the docs is typed by hand.

These machines are shared and noisy (identical runs vary by up to 1.5x), so a
single run is never a figure. Each JSON also records what ran: the script and its
arguments, the git commit (and whether the tree had changes), and per figure
whether a warm-up run was thrown away. :func:`in_child` runs a measurement in a
process of its own (its peak memory its own) that dies with the bench: a bench
killed mid-run leaves no child running.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"
MIN_REPEATS = 3


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "gpu": gpu}


def peak_rss_gb() -> float:
    """This process's peak resident memory, in GB: the kernel's high-water mark of its own
    address space (VmHWM). ``getrusage``'s ru_maxrss is kept across fork and exec, so in
    a freshly spawned process it starts at the parent's peak; VmHWM does not."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def provenance() -> dict:
    """What ran: the script and its arguments, the commit, whether the tree had changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(root)
    except ValueError:
        pass
    return {"script": str(script), "argv": sys.argv[1:], "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _die_with_parent() -> None:
    """In a child process: be sent SIGTERM when the bench that started it dies (Linux's
    PR_SET_PDEATHSIG), even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def in_child(function, *args):
    """``function(*args)`` in a freshly spawned process that dies with the bench; returns
    its result (its peak memory, read inside it, is its own)."""
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn"),
                             initializer=_die_with_parent) as pool:
        return pool.submit(function, *args).result()


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


class Bench:
    """Figures of one benchmark run: ``measure`` each, ``ratio`` pairs, then ``write``."""

    def __init__(self, name: str, *, repeats: int = MIN_REPEATS, settings: dict | None = None):
        if repeats < MIN_REPEATS:
            raise SystemExit(f"--repeats must be at least {MIN_REPEATS}, not {repeats}")
        self.name, self.repeats = name, repeats
        self.settings = settings or {}
        self.figures: dict[str, dict] = {}
        self.machine = machine()
        self.ran = provenance()
        print(f"{name}: {self.machine['cpu']} ({self.machine['cores']} cores, "
              f"{self.machine['torch_threads']} torch threads), torch {self.machine['torch']}"
              + (f", {self.machine['gpu']}" if self.machine["gpu"] else "")
              + f"; median and min-max of {repeats} repeats after a warm-up", flush=True)

    def measure(self, label: str, run: Callable[[], float], *, unit: str,
                warmup: bool = True) -> dict:
        """Call ``run`` (it returns the figure: seconds, img/s, ...) once to warm up, then
        ``repeats`` times; record and print the median and min-max."""
        if warmup:
            run()
        values = [float(run()) for _ in range(self.repeats)]
        return self.record(label, values, unit=unit, warmup=warmup)

    def interleave(self, runs: dict[str, tuple[Callable[[], float], str]], *,
                   warmup: bool = True) -> dict[str, dict]:
        """Measure several figures in turns (A, B, A, B, ...): the i-th repeats of a ratio's
        two figures then ran a moment apart, on the same state of a shared machine.

        runs : label -> (the call returning the figure, its unit).
        """
        if warmup:
            for run, _ in runs.values():
                run()
        values = {label: [] for label in runs}
        for _ in range(self.repeats):
            for label, (run, _) in runs.items():
                values[label].append(float(run()))
        return {label: self.record(label, values[label], unit=unit, warmup=warmup)
                for label, (_, unit) in runs.items()}

    def time(self, label: str, run: Callable[[], object], *, warmup: bool = True) -> dict:
        """Seconds ``run`` takes (median of the repeats, after a warm-up)."""
        def seconds() -> float:
            start = time.perf_counter()
            run()
            return time.perf_counter() - start
        return self.measure(label, seconds, unit="s", warmup=warmup)

    def record(self, label: str, values: list[float], *, unit: str,
               warmup: bool | None = None) -> dict:
        """A figure from ``values``; ``warmup``: whether a warm-up run was thrown away
        before them (None: not a timing, or derived from figures that say)."""
        figure = {**summary(values), "unit": unit, "warmup": warmup}
        self.figures[label] = figure
        print(f"  {label}: {_fmt(figure)}", flush=True)
        return figure

    def ratio(self, label: str, numerator: str, denominator: str) -> dict:
        """The ratio of two measured figures, repeat by repeat."""
        a, b = self.figures[numerator]["values"], self.figures[denominator]["values"]
        return self.record(label, [x / y for x, y in zip(a, b)], unit="x")

    def write(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps({
            "bench": self.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": self.machine, "ran": self.ran, "repeats": self.repeats,
            "settings": self.settings, "figures": self.figures}, indent=2) + "\n")
        print(f"written: {path}")
        return path


def _fmt(figure: dict) -> str:
    digits = 3 if figure["unit"] == "x" or figure["median"] < 10 else 1
    return (f"{figure['median']:.{digits}f} {figure['unit']} "
            f"({figure['min']:.{digits}f}-{figure['max']:.{digits}f})")
