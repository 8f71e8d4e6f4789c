"""The measuring harness every benchmark in this folder uses, so that their ratios mean the same.

A benchmark hands `measure` a list of `Contender`s. Each has a `block`: a callable that does one
short piece of the work (a few training steps, one epoch, one pass over the files) and returns
how many images it really processed (for training: the images that went through an optimiser
step, so a loader that drops its last batch is not credited for the dropped images). `measure`
runs `warmup` blocks of every contender untimed, then `rounds` rounds; in each round every
contender runs one block, and the order rotates by one each round (A B, B A, A B, ... for two),
so that load from other processes and slow drifts (heat, caches) land on all contenders alike.

Each block is timed by wall clock and by CPU time: the process's own (`time.process_time`, all
threads) plus its child processes' (DataLoader workers: live ones read from /proc, ended ones
from `getrusage(RUSAGE_CHILDREN)`). A ratio is computed per round (the baseline's images per
second over the other's, or the other way round) and summarised by its median and its min-max,
never by the best round. `header` and `footer` print what the figures depend on (torch, threads,
workers, load average) and warn when the machine was busy.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: A load average above this share of the cores draws a warning under the table.
BUSY_SHARE = 0.75


@dataclass
class Contender:
    """One way of doing the work. `block()` does one timed piece and returns its image count;
    `setup()` (optional) runs once before the warm-up; `workers` is printed in the header."""

    name: str
    block: Callable[[], int]
    setup: Callable[[], None] | None = None
    workers: int = 0


@dataclass
class Timing:
    """One block of one contender: images, wall seconds, CPU seconds."""

    images: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.images / self.wall if self.wall > 0 else float("inf")

    @property
    def cpu_rate(self) -> float:
        return self.images / self.cpu if self.cpu > 0 else float("inf")


@dataclass
class Measurement:
    """Every timed block, by contender name, in the order the rounds ran them."""

    names: list[str]
    timings: dict[str, list[Timing]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def rates(self, name: str, cpu: bool = False) -> list[float]:
        return [t.cpu_rate if cpu else t.rate for t in self.timings[name]]

    def ratios(self, name: str, baseline: str, cpu: bool = False) -> list[float]:
        """Per round: `name`'s images per second over `baseline`'s (>1: `name` is faster)."""
        mine, theirs = self.rates(name, cpu), self.rates(baseline, cpu)
        return [a / b for a, b in zip(mine, theirs, strict=True)]


@dataclass
class Summary:
    median: float
    low: float
    high: float

    def text(self, digits: int = 2, suffix: str = "x") -> str:
        return f"{self.median:.{digits}f}{suffix} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def summarize(values: Sequence[float]) -> Summary:
    """Median and min-max of `values` (at least one)."""
    if not values:
        raise ValueError("nothing to summarise")
    return Summary(statistics.median(values), min(values), max(values))


class Clock:
    """Wall and CPU seconds; tests hand `measure` a fake one."""

    def wall(self) -> float:
        return time.perf_counter()

    def cpu(self) -> float:
        return time.process_time() + children_cpu()


def children_cpu() -> float:
    """CPU seconds of this process's child processes: ended (and waited for) ones from
    `getrusage`, live ones (persistent loader workers) from /proc where there is one."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for task in Path("/proc/self/task").glob("*/children"):
        try:
            pids = task.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # Fields 14-17 of stat (utime, stime, cutime, cstime); [0] here is field 3.
            total += sum(int(value) for value in fields[11:15]) / tick
    return total


def schedule(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of each round: `names` rotated by the round's index."""
    count = len(names)
    return [[names[(r + i) % count] for i in range(count)] for r in range(rounds)]


def measure(
    contenders: Sequence[Contender],
    rounds: int,
    warmup: int = 1,
    clock: Clock | None = None,
    log: Callable[[str], None] | None = print,
) -> Measurement:
    """Run the contenders' blocks interleaved (see the module doc) and time them."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    clock = clock or Clock()
    by_name = {c.name: c for c in contenders}
    if len(by_name) != len(contenders):
        raise ValueError("contender names must differ")
    names = [c.name for c in contenders]
    for contender in contenders:
        if contender.setup is not None:
            contender.setup()
    for _ in range(warmup):
        for contender in contenders:
            contender.block()
    result = Measurement(names, {name: [] for name in names})
    for index, order in enumerate(schedule(names, rounds)):
        for name in order:
            wall, cpu = clock.wall(), clock.cpu()
            images = by_name[name].block()
            timing = Timing(int(images), clock.wall() - wall, clock.cpu() - cpu)
            result.timings[name].append(timing)
            result.order.append(name)
        if log is not None:
            rates = ", ".join(f"{n} {result.timings[n][-1].rate:.1f}" for n in names)
            log(f"  round {index + 1}/{rounds}: img/s {rates}")
    return result


# -- printing --------------------------------------------------------------------------------
def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def header(title: str, contenders: Sequence[Contender] = (), **facts: object) -> str:
    """What the figures depend on: torch, threads, workers, load average now."""
    import torch

    load = load_average()
    lines = [
        f"## {title}",
        "",
        f"- torch {torch.__version__}, torch threads: {torch.get_num_threads()}, "
        f"cores: {os.cpu_count()}, Python {platform.python_version()}",
    ]
    if contenders:
        workers = ", ".join(f"{c.name} {c.workers}" for c in contenders)
        lines.append(f"- loader workers: {workers}")
    for key, value in facts.items():
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    if load is not None:
        lines.append(f"- load average at start: {load[0]:.2f}")
    return "\n".join(lines)


def footer(threads: int | None = None) -> str:
    """The load average at the end, and a warning when the machine was busy."""
    load = load_average()
    if load is None:
        return ""
    cores = os.cpu_count() or 1
    text = f"- load average at end: {load[0]:.2f}"
    if load[0] > BUSY_SHARE * cores:
        text += (
            f"\n- WARNING: the machine was busy (load {load[0]:.2f} on {cores} cores): "
            "other processes shared the CPU, so these figures are noisy"
        )
    return text


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (numbers right-aligned)."""

    def right(values: Sequence[object]) -> bool:
        return all(isinstance(v, int | float) or _numeric(str(v)) for v in values)

    texts = [[_text(v) for v in row] for row in rows]
    align = [
        "---:" if rows and right([row[i] for row in rows]) else "---" for i in range(len(columns))
    ]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in texts]
    return "\n".join(lines)


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x"))
    except ValueError:
        return text in {"-", ""}
    return True


def speed_table(
    measurement: Measurement,
    baseline: str,
    targets: dict[str, float] | None = None,
    unit: str = "img/s",
) -> str:
    """One row per contender: median `unit` (min-max) by wall clock, images per CPU second,
    and the ratios of `baseline` over that contender (wall and CPU), with the target and
    whether the median meets it."""
    targets = targets or {}
    rows = []
    for name in measurement.names:
        wall, cpu = summarize(measurement.rates(name)), summarize(measurement.rates(name, True))
        row: list[object] = [name, wall.text(1, ""), cpu.text(1, "")]
        if name == baseline:
            row += ["-", "-", "-"]
        else:
            ratio = summarize(measurement.ratios(baseline, name))
            cpu_ratio = summarize(measurement.ratios(baseline, name, cpu=True))
            target = targets.get(name)
            verdict = "-"
            if target is not None:
                met = "met" if ratio.median >= target else "MISSED"
                verdict = f">= {target:.2f}x: {met}"
            row += [ratio.text(), cpu_ratio.text(), verdict]
        rows.append(row)
    columns = [
        "contender",
        f"{unit} median (min-max)",
        "img per CPU s",
        f"{baseline} / contender, wall",
        "CPU",
        "target",
    ]
    return markdown_table(columns, rows)


# -- the command line every script shares ----------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, rounds: int = 5) -> None:
    """--rounds, --warmup, --threads, --quick, --out, --contenders."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds ({rounds})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed blocks first (1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--contenders", nargs="+", default=None, help="run only these (default: all)"
    )


def start(args: argparse.Namespace) -> None:
    """Apply --threads."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def wanted(args: argparse.Namespace, name: str) -> bool:
    """Whether --contenders (prefixes of names) selects `name`."""
    return args.contenders is None or any(name.startswith(c) for c in args.contenders)


def optional(module: str, purpose: str) -> bool:
    """Whether `module` imports; if not, say that its contender is skipped."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        print(f"{module} not installed: {purpose} skipped (pip install 'torso[bench]')")
        return False
    return True


def publish(args: argparse.Namespace, text: str) -> None:
    """Print `text`, and write it to --out when given."""
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def ratio_table(measurement: Measurement, pairs: Sequence[tuple[str, str, float | None]]) -> str:
    """One row per (numerator, denominator, target): the per-round ratio of their images per
    second, median (min-max), by wall clock and by CPU time, and whether the median meets the
    target. Pairs naming a contender that did not run are left out."""
    rows = []
    for top, bottom, target in pairs:
        if top not in measurement.timings or bottom not in measurement.timings:
            continue
        wall = summarize(measurement.ratios(top, bottom))
        cpu = summarize(measurement.ratios(top, bottom, cpu=True))
        verdict = "-"
        if target is not None:
            verdict = f">= {target:.2f}x: " + ("met" if wall.median >= target else "MISSED")
        rows.append([f"{top} / {bottom}", wall.text(), cpu.text(), verdict])
    return markdown_table(["ratio", "wall, median (min-max)", "CPU", "target"], rows)


def rate_table(measurement: Measurement, extra: dict[str, dict[str, object]] | None = None) -> str:
    """One row per contender: images per second by wall clock and per CPU second, median
    (min-max), and any `extra` columns (by contender name)."""
    extra = extra or {}
    columns = sorted({key for values in extra.values() for key in values})
    rows = []
    for name in measurement.names:
        wall, cpu = summarize(measurement.rates(name)), summarize(measurement.rates(name, True))
        more = [extra.get(name, {}).get(column, "-") for column in columns]
        rows.append([name, wall.text(1, ""), cpu.text(1, ""), *more])
    header_row = ["contender", "img/s median (min-max)", "img per CPU s", *columns]
    return markdown_table(header_row, rows)
