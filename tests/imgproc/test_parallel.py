"""ordered_map: results in input order, at most ``workers`` items in flight, errors raised at their item."""
import threading
import time

import pytest

from artseg_core.imgproc.parallel import ordered_map

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def test_results_come_in_input_order_whatever_finishes_first():
    def slow_first(i):
        time.sleep(0.05 if i % 3 == 0 else 0.0)
        return i * i

    for workers in (1, 2, 4):
        assert list(ordered_map(slow_first, range(10), workers)) == [i * i for i in range(10)]


def test_at_most_workers_items_are_in_flight_and_items_are_taken_lazily():
    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    taken = []

    def items():
        for i in range(12):
            taken.append(i)
            yield i

    def work(i):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return i

    gen = ordered_map(work, items(), workers=3)
    assert next(gen) == 0
    assert len(taken) <= 4  # three in flight, one refilled: not the whole input
    assert list(gen) == list(range(1, 12))
    assert 1 < state["peak"] <= 3


def test_an_error_is_raised_at_its_item():
    def fail_on_three(i):
        if i == 3:
            raise ValueError("field 3 is broken")
        return i

    got = []
    with pytest.raises(ValueError, match="field 3"):
        for r in ordered_map(fail_on_three, range(6), workers=2):
            got.append(r)
    assert got == [0, 1, 2]
