from clients.breaker import CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_opens_after_threshold_fails_fast_then_tries_once():
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown=2.0, clock=clock)
    for _ in range(3):
        assert b.allow()
        b.record(False)
    assert b.is_open and b.opened == 1
    assert not b.allow()
    clock.now = 2.5
    assert b.allow()  # the one trial call
    assert not b.allow()
    b.record(True)
    assert not b.is_open and b.allow()
