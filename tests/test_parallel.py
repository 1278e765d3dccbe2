"""lib.parallel: results in order, whatever the workers; items read only as results are taken; workers stop."""
from __future__ import annotations

import functools
import os

import pytest

from lib import parallel


def _power(x: int, exponent: int = 2) -> int:  # sent to the workers by name: module level
    return x ** exponent


class Counted:
    """An iterable that records how many items were read from it."""

    def __init__(self, n: int):
        self.n, self.taken = n, 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            yield i


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_results_come_in_the_order_of_the_items_with_the_bound_job(workers):
    with parallel.ordered(functools.partial(_power, exponent=3), range(50), workers, chunksize=4) as results:
        assert list(results) == [i ** 3 for i in range(50)]


def test_items_are_read_only_as_results_are_taken():
    items = Counted(100)
    workers = min(2, parallel.cpu_count())
    with parallel.ordered(_power, items, 2, chunksize=1, in_flight=1) as results:
        assert [next(results) for _ in range(3)] == [0, 1, 4]
        assert items.taken <= 3 + workers  # the ones taken and one chunk queued per worker: not all 100
        taken = items.taken
        assert next(results) == 9
        assert items.taken <= taken + 1  # one result taken, one more chunk
    assert items.taken < 100  # leaving the context stopped the reading


def test_cpu_count_is_this_process_share():
    assert 1 <= parallel.cpu_count() <= (os.cpu_count() or 1)
