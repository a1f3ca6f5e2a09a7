"""Connection and message ids: unguessable, unique across threads and forked processes."""

from __future__ import annotations

import multiprocessing
import re
import threading

from realtime_server.edge import random_id


def test_ids_are_sixteen_url_safe_characters_and_do_not_repeat() -> None:
    ids = [random_id() for _ in range(20_000)]  # several refills of the pool
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_threads_draw_different_ids() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(random_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for ids in drawn for i in ids]
    assert len(set(everything)) == len(everything) == 20_000


def _child_ids(queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put([random_id() for _ in range(100)])


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    random_id()  # the parent's pool holds unused bytes when it forks
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = context.Queue()
    child = context.Process(target=_child_ids, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(30)
    from_parent = [random_id() for _ in range(100)]
    assert not set(from_child) & set(from_parent)
