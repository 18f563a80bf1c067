import numpy as np

from cacheserver.arenas import ArenaPool


def test_take_gives_the_smallest_fitting_arena_and_never_the_same_twice():
    pool = ArenaPool(max_arenas=3)
    a, b, c = np.zeros(100, np.uint8), np.zeros(100, np.uint8), np.zeros(300, np.uint8)
    for arena in (a, b, c):  # a and b are equal element by element
        pool.give(arena)
    first, second = pool.take(50), pool.take(50)
    assert {id(first), id(second)} == {id(a), id(b)}
    assert pool.take(200) is c
    assert pool.take(10).nbytes == 10  # the pool is empty: a new one


def test_a_full_pool_drops_its_smallest():
    pool = ArenaPool(max_arenas=2)
    big = np.zeros(1000, np.uint8)
    for arena in (np.zeros(10, np.uint8), big, np.zeros(100, np.uint8)):
        pool.give(arena)
    assert pool.take(500) is big
    assert pool.take(50).nbytes == 100
