"""What a running experiment shows: the progress display when batches of runs overlap (phase 1 in a driver
thread while a search runs), and how often runs.parquet is rebuilt."""
from __future__ import annotations

import threading

from hpo_bench.progress import RunProgress
from hpo_bench.trial import Trial


def row(k: int) -> dict:
    return {"method": "M", "rho0": 0.05, "seed": k, "status": "ok", "test_acc": 0.5, "grad_evals": 10, "wall_s": 1.0}


def test_a_batch_that_starts_while_another_is_in_flight_joins_it(capsys):
    with RunProgress(enabled=False) as progress:
        progress.start_batch(3, 2)
        progress.finish(row(0))
        progress.start_batch(2, 2)  # a search's runs while phase 1 has 2 left
        assert progress.batch_total == 5 and progress.batch_done == 1
        for k in range(1, 5):
            progress.finish(row(k))
        assert not progress.in_batch and progress.step_bar is None
        progress.start_batch(4, 2)  # the previous batch is over: a new count
        assert (progress.batch_total, progress.batch_done) == (4, 0)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 runs, 2 at a time" and out[2] == "2 more runs, 4 in flight"
    assert "(1/3, eta" in out[1]
    assert "(5/5, done)" in out[-2] and out[-1] == "4 runs, 2 at a time"


class Bar:
    def close(self) -> None:
        pass


def test_a_sequential_run_during_a_batch_neither_resets_the_count_nor_gets_the_step_bar():
    with RunProgress(enabled=False) as progress:
        progress.start_batch(2, 2)
        progress.bar = Bar()  # stands for the tqdm bar of a terminal
        progress.start(Trial(method="M", strategy="sam", params={}, rho=0.1, seed=0, data={}, model={}, train={}))
        assert progress.in_batch and progress.step_bar is None


def test_finishes_from_two_threads_are_each_counted_once(capsys):
    with RunProgress(enabled=False) as progress:
        progress.start_batch(200, 2)

        def finish_many(first: int) -> None:
            for k in range(first, first + 100):
                progress.finish(row(k))

        threads = [threading.Thread(target=finish_many, args=(first,)) for first in (0, 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert progress.done == progress.batch_done == 200
    counts = sorted(int(line.rsplit("(", 1)[1].split("/")[0]) for line in capsys.readouterr().out.splitlines()[1:])
    assert counts == list(range(1, 201))


def test_refresh_rebuilds_runs_parquet_at_most_once_per_interval(tmp_path, monkeypatch):
    """The loops that finish runs one by one refresh runs.parquet (O(n) per rebuild) at most every
    REFRESH_S seconds; consolidate() always rebuilds."""
    import pandas as pd

    from hpo_bench import store as store_mod
    from hpo_bench.store import ResultsStore

    store = ResultsStore(tmp_path / "run")
    clock = [100.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: clock[0])

    def finish(rid: str) -> None:
        store.write_run({"run_id": rid, "finished_at": clock[0]}, pd.DataFrame({"a": [1]}))

    def stored() -> list[str]:
        return sorted(pd.read_parquet(store.root / "runs.parquet")["run_id"])

    finish("a")
    store.refresh()  # never rebuilt here before: rebuilds
    assert stored() == ["a"]
    finish("b")
    clock[0] += store_mod.REFRESH_S / 2
    store.refresh()  # too soon: runs.parquet lags
    assert stored() == ["a"]
    clock[0] += store_mod.REFRESH_S / 2
    store.refresh()
    assert stored() == ["a", "b"]
    finish("c")
    store.consolidate()  # the end of a batch: always
    assert stored() == ["a", "b", "c"]
