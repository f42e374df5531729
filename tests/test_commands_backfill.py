"""The back-fill command's hook: ``TaskRunner.request_backfill`` makes the next tick
search the back-fill window again (against the simulator, as tests/test_tasks.py)."""

from __future__ import annotations

from test_tasks import JAN1, Bench, bench, local

__all__ = ["bench"]  # the fixture, imported from test_tasks


def test_a_requested_backfill_searches_the_window_again(bench: Bench) -> None:
    runner = bench.runner(backfill_days=4)
    for minute in range(30, 45):  # today's freeze, then the search of the window
        bench.at(runner, local(JAN1, 0, minute))
        if not runner.status()["backfill"]:
            break
    assert not runner.status()["backfill"]
    jobs = runner.jobs
    bench.at(runner, local(JAN1, 0, 50))
    assert runner.jobs == jobs  # nothing due: no search without a request
    runner.request_backfill()
    bench.at(runner, local(JAN1, 0, 51))
    assert runner.jobs > jobs  # the days still missing were searched for again
    for minute in range(52, 54):  # let that search end
        bench.at(runner, local(JAN1, 0, minute))
    runner.request_backfill()
    bench.clock.distrust()
    bench.at(runner, local(JAN1, 0, 54))  # untrusted: no task runs, the request waits
    bench.clock.trust("test")
    jobs = runner.jobs
    bench.at(runner, local(JAN1, 0, 55))
    assert runner.jobs > jobs
