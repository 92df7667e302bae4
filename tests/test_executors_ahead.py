"""Work run ahead in a forked process (:class:`optplace.infra.executors.Ahead`): its messages in order,
its exception re-raised whole, and a child that is no longer wanted stopped."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from optplace.infra.executors import Ahead
from optplace.solver.problem import Infeasible, TimeLimitReached


def _count_to_three(send):
    for i in range(3):
        send((i, os.getpid()))


def test_messages_arrive_in_order_from_another_process():
    with Ahead(_count_to_three) as ahead:
        got = [ahead.receive() for _ in range(3)]
    assert [i for i, _ in got] == [0, 1, 2]
    assert {pid for _, pid in got} != {os.getpid()}  # computed in the child


def _fails(kind):
    def work(send):
        send("started")
        if kind == "infeasible":
            raise Infeasible("pool too small", "gpu_pool")
        raise TimeLimitReached("time limit reached after 3.0 s")

    return work


def test_an_exception_in_the_child_is_raised_in_the_parent_with_what_it_carries():
    with Ahead(_fails("infeasible")) as ahead:
        assert ahead.receive() == "started"
        with pytest.raises(Infeasible) as e:
            ahead.receive()
    assert str(e.value) == "pool too small" and e.value.constraint == "gpu_pool"
    with Ahead(_fails("time")) as ahead:
        ahead.receive()
        with pytest.raises(TimeLimitReached) as t:
            ahead.receive()
    assert t.value.constraint == "time_limit_s" and "3.0 s" in str(t.value)


def _dies(send):
    os._exit(3)  # no message, no exception: a crash


def test_a_child_that_dies_without_a_message_is_an_error_not_a_hang():
    with Ahead(_dies) as ahead, pytest.raises(RuntimeError, match="exit 3"):
        ahead.receive()


def _slow(send):
    send("first")
    time.sleep(600)
    send("never read")


def test_a_child_no_longer_wanted_is_stopped_when_the_block_ends():
    before = set(multiprocessing.active_children())
    t = time.monotonic()
    with Ahead(_slow) as ahead:
        assert ahead.receive() == "first"
    assert time.monotonic() - t < 30  # killed, not waited for
    assert set(multiprocessing.active_children()) == before
