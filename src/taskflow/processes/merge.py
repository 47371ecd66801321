"""One metrics page from the pages of several processes of a role.

Every process renders its own page (:func:`taskflow.metrics.page`); the supervisor
serves their sum, in the same shape as a single process's page, so dashboards, alerts
and ``promtool check metrics`` see no difference. Counters and histograms (buckets, sums
and counts) are added up series by series. Gauges are added up when they describe the
processes together (handlers running, slots, memory); the others say the same thing in
every process that has them (cluster-wide readings from the stores, constants such as
``python_info``) and the largest is shown, which never counts one reading twice.
Pure functions: the fetching is in :mod:`taskflow.processes.pages`.
"""

from __future__ import annotations

from collections.abc import Iterable

from taskflow.metrics import _number

# Gauges whose processes' values add up to the pod's.
ADDITIVE_GAUGES = frozenset({
    "taskflow_worker_running_jobs", "taskflow_worker_concurrency_slots",
    "taskflow_worker_free_slots", "taskflow_api_waiters", "taskflow_supervised_processes",
    "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
})
# The earliest start: when the pod's processes began (a restarted child is later).
EARLIEST_GAUGES = frozenset({"process_start_time_seconds"})
# Gauges that read the same thing in every process: the largest is shown. Listed so that
# a new gauge is a decision (tests/unit/test_processes.py checks every gauge is here or
# above), not a silent default.
SHARED_GAUGES = frozenset({
    "taskflow_queue_jobs", "taskflow_queue_oldest_ready_age_seconds",
    "taskflow_queue_workers", "taskflow_workers_alive", "taskflow_queue_stats_age_seconds",
    "taskflow_outbox_backlog", "taskflow_outbox_oldest_age_seconds", "process_max_fds",
    "python_info",
})
# What a process leaves behind when it exits: counts only grow (its gauges went with it).
CUMULATIVE_KINDS = frozenset({"counter", "histogram", "summary"})


class Family:
    """One metric family of a page: its ``# HELP``/``# TYPE`` lines and its samples
    (the text before the value, e.g. ``name_bucket{le="0.5"}``, to the value)."""

    __slots__ = ("name", "kind", "head", "samples")

    def __init__(self, name: str, head: str) -> None:
        self.name = name
        self.kind = "untyped"
        self.head = head
        self.samples: dict[str, float] = {}


Page = dict[str, Family]  # family name -> family, in page order


def parse(text: str) -> Page:
    """The families of an exposition page (text format 0.0.4, as taskflow and
    prometheus-client write it: a ``# HELP`` line opens each family)."""
    page: Page = {}
    family: Family | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name = line[7:].partition(" ")[0]
            family = page.setdefault(name, Family(name, ""))
            family.head = line + "\n"
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            family = page.setdefault(name, Family(name, ""))
            family.kind = kind.strip()
            family.head += line + "\n"
        elif line.startswith("#"):
            continue
        elif family is not None:
            # The value is the last field: label values may hold spaces, numbers never do.
            key, _, value = line.rpartition(" ")
            family.samples[key] = float(value)
        else:
            raise ValueError(f"a sample before any # HELP line: {line!r}")
    return page


def _combine(family: Family, old: float, new: float) -> float:
    if family.kind in CUMULATIVE_KINDS or family.name in ADDITIVE_GAUGES:
        return old + new
    if family.name in EARLIEST_GAUGES:
        return min(old, new)
    return max(old, new)


def merge(pages: Iterable[Page]) -> Page:
    """The pages' families combined series by series (see the module's docstring);
    families and series in the order they first appear."""
    out: Page = {}
    for page in pages:
        for name, family in page.items():
            mine = out.get(name)
            if mine is None:
                mine = out[name] = Family(name, family.head)
                mine.kind = family.kind
            samples = mine.samples
            for key, value in family.samples.items():
                old = samples.get(key)
                samples[key] = value if old is None else _combine(mine, old, value)
    return out


def cumulative(page: Page) -> Page:
    """What stays of an exited process's page in the sum: its counts (a counter that
    went down would read as a reset, and ``increase()`` would count it all again)."""
    return {name: f for name, f in page.items() if f.kind in CUMULATIVE_KINDS}


def render(page: Page) -> str:
    """The page as exposition text."""
    lines = []
    for family in page.values():
        lines.append(family.head)
        lines.extend(f"{key} {_number(value)}\n" for key, value in family.samples.items())
    return "".join(lines)
