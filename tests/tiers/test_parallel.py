import threading
import time

import pytest

from tiers import parallel


def test_a_large_batch_runs_on_every_thread_in_order_and_a_small_one_on_the_callers():
    def name(i: int) -> tuple[int, str]:
        return i, threading.current_thread().name

    small = parallel.each(name, range(8), 2 * parallel.MIN_SHARE_BYTES - 1)
    assert small == [(i, threading.current_thread().name) for i in range(8)]
    if parallel.THREADS < 2:
        pytest.skip("one CPU: every batch stays on the caller's thread")
    large = parallel.each(name, range(64), parallel.THREADS * parallel.MIN_SHARE_BYTES)
    assert [i for i, _ in large] == list(range(64))
    names = [n for _, n in large]
    assert names[0] == threading.current_thread().name  # the first share: the caller's
    assert len(set(names)) == parallel.THREADS and names[-1].startswith("kvtier-copy")


@pytest.mark.parametrize("failing", [0, 15])  # in the caller's share, in the last thread's
def test_an_error_in_the_work_comes_out_of_each_after_every_share_ended(failing):
    done = []

    def work(i: int) -> int:
        if i == failing:
            raise ValueError(f"block {i}")
        time.sleep(0.001)
        done.append(i)
        return i

    with pytest.raises(ValueError, match=f"block {failing}"):
        parallel.each(work, range(16), 1 << 30)
    finished = len(done)
    time.sleep(0.05)
    assert len(done) == finished  # nothing still runs


def test_copy_writes_the_start_of_its_destination():
    dest = bytearray(b"." * 8)
    parallel.copy(memoryview(dest)[2:], b"abc")
    assert dest == b"..abc..."


def test_copy_all_copies_every_pair_of_a_spread_batch():
    share = parallel.MIN_SHARE_BYTES
    srcs = [bytes([i]) * share for i in range(4)]
    dests = [bytearray(share) for _ in srcs]
    parallel.copy_all(list(zip(dests, srcs, strict=True)))
    assert dests == srcs
