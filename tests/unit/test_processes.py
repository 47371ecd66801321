"""The pure parts of taskflow.processes: merging metrics pages, counting processes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskflow import metrics
from taskflow.api.metrics import ApiMetrics
from taskflow.cli import _parser
from taskflow.processes import merge
from taskflow.processes.pages import PageCollector, serve_page, socket_path
from taskflow.processes.supervisor import cpu_count, process_count

ONE = """\
# HELP jobs_total Jobs done
# TYPE jobs_total counter
jobs_total{queue="a"} 3.0
# HELP wait_seconds Waits
# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.1",queue="a"} 1.0
wait_seconds_bucket{le="+Inf",queue="a"} 2.0
wait_seconds_count{queue="a"} 2.0
wait_seconds_sum{queue="a"} 0.75
# HELP taskflow_worker_running_jobs Handlers running
# TYPE taskflow_worker_running_jobs gauge
taskflow_worker_running_jobs 4.0
# HELP taskflow_queue_jobs Jobs of a queue
# TYPE taskflow_queue_jobs gauge
taskflow_queue_jobs{queue="a",state="ready"} 10.0
# HELP process_start_time_seconds Start time
# TYPE process_start_time_seconds gauge
process_start_time_seconds 200.0
"""

TWO = """\
# HELP jobs_total Jobs done
# TYPE jobs_total counter
jobs_total{queue="a"} 5.0
jobs_total{queue="b c"} 1.0
# HELP wait_seconds Waits
# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.1",queue="a"} 0.0
wait_seconds_bucket{le="+Inf",queue="a"} 1.0
wait_seconds_count{queue="a"} 1.0
wait_seconds_sum{queue="a"} 0.5
# HELP taskflow_worker_running_jobs Handlers running
# TYPE taskflow_worker_running_jobs gauge
taskflow_worker_running_jobs 1.0
# HELP process_start_time_seconds Start time
# TYPE process_start_time_seconds gauge
process_start_time_seconds 100.0
# HELP only_here_total Only in the second page
# TYPE only_here_total counter
only_here_total 7.0
"""


def samples(page: merge.Page) -> dict[str, float]:
    return {k: v for f in page.values() for k, v in f.samples.items()}


def test_counters_histograms_and_additive_gauges_are_summed_the_rest_is_not():
    merged = merge.merge([merge.parse(ONE), merge.parse(TWO)])
    assert samples(merged) == {
        'jobs_total{queue="a"}': 8.0,
        'jobs_total{queue="b c"}': 1.0,  # a label value with a space
        'wait_seconds_bucket{le="0.1",queue="a"}': 1.0,
        'wait_seconds_bucket{le="+Inf",queue="a"}': 3.0,
        'wait_seconds_count{queue="a"}': 3.0,
        'wait_seconds_sum{queue="a"}': 1.25,
        "taskflow_worker_running_jobs": 5.0,
        'taskflow_queue_jobs{queue="a",state="ready"}': 10.0,  # one process's reading
        "process_start_time_seconds": 100.0,  # the earliest
        "only_here_total": 7.0,
    }


def test_the_merged_page_keeps_the_shape_of_one_page():
    one = merge.parse(ONE)
    text = merge.render(merge.merge([one, merge.parse(TWO)]))
    # Same families, in the same order, with their HELP and TYPE lines; parses cleanly.
    assert list(merge.parse(text))[:len(one)] == list(one)
    assert merge.render(merge.merge([one])) == ONE
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["jobs"] == "counter" and families["wait_seconds"] == "histogram"


def test_a_real_page_survives_a_round_trip_and_sums_to_double():
    page = (metrics.page() + ApiMetrics().exposition()).decode()
    parsed = merge.parse(page)
    assert merge.render(merge.merge([parsed])) == merge.render(parsed)
    doubled = merge.merge([parsed, merge.parse(page)])
    for name, family in doubled.items():
        if family.kind == "counter":
            for key, value in family.samples.items():
                assert value == 2 * parsed[name].samples[key]
    list(text_string_to_metric_families(merge.render(doubled)))


def test_every_gauge_says_how_it_merges():
    # A new gauge must be placed: summed over processes, or the same in each.
    page = (metrics.page() + ApiMetrics().exposition()).decode()
    gauges = {f.name for f in merge.parse(page).values() if f.kind == "gauge"}
    gauges |= {"taskflow_queue_jobs", "taskflow_queue_oldest_ready_age_seconds",
               "taskflow_queue_workers", "taskflow_workers_alive",
               "taskflow_queue_stats_age_seconds"}  # taskflow.stats, once refreshed
    known = merge.ADDITIVE_GAUGES | merge.EARLIEST_GAUGES | merge.SHARED_GAUGES
    assert gauges - known == set()


def test_an_exited_child_leaves_its_counts_not_its_gauges():
    collector = PageCollector("/nonexistent", 2, lambda: b"")
    collector.latest = {0: merge.parse(ONE), 1: merge.parse(TWO)}
    collector.retire(0)
    assert 0 not in collector.latest
    merged = merge.parse(collector._merged([collector.latest[1]], collector.retired).decode())
    got = samples(merged)
    assert got['jobs_total{queue="a"}'] == 8.0  # no counter goes down
    assert got['wait_seconds_count{queue="a"}'] == 3.0
    assert got["taskflow_worker_running_jobs"] == 1.0  # its running jobs went with it
    assert 'taskflow_queue_jobs{queue="a",state="ready"}' not in got


async def test_a_page_fetched_while_its_child_exited_is_not_kept():
    folder = tempfile.mkdtemp(prefix="taskflow-pages-test-")
    answer = asyncio.Event()

    async def slow() -> bytes:
        await answer.wait()
        return TWO.encode()

    collector = PageCollector(folder, 1, lambda: ONE.encode())
    try:
        async with serve_page(socket_path(folder, 0), slow):
            scrape = asyncio.create_task(collector.page())
            await asyncio.sleep(0.2)
            collector.retire(0)  # the child exited while we were asking it
            answer.set()
            page = merge.parse((await scrape).decode())
            assert collector.latest == {}
            assert samples(page)['jobs_total{queue="a"}'] == 3.0  # the own page alone
            page = merge.parse((await collector.page()).decode())  # the new child's
            assert samples(page)['jobs_total{queue="a"}'] == 8.0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_process_counts():
    assert process_count(3) == 3 and process_count("3") == 3
    assert process_count(0) == process_count("auto") == cpu_count() >= 1
    assert process_count("0") == cpu_count()  # as a command line or a settings file gives it


@pytest.mark.parametrize(("argv", "value"), [
    (["work", "--processes", "4"], "4"), (["work", "-p", "auto"], "auto"),
    (["work"], None)])
def test_work_takes_a_process_count(argv, value):
    assert _parser().parse_args(argv).processes == value


@pytest.mark.parametrize("value", ["-1", "\u00b2", "two"])
def test_a_bad_process_count_is_refused(capsys, value):
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--workers", value])
    assert "not a number of processes" in capsys.readouterr().err
