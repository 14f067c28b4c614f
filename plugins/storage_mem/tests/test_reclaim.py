"""mem:// reclaims expired state a few keys per write: bounded memory, and no call ever scans everything."""

from bastion_storage_mem import RECLAIM_STEP, MemoryDriver

from kernel.testing import FakeClock

DOMAIN = "reclaim.test"


def test_nonces_under_sustained_load_stay_bounded():
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    driver.set(DOMAIN, "session", {"user": "ann"}, 1e6)
    for second in range(200):  # 100 signed calls a second, each with a nonce living 3 s
        for call in range(100):
            driver.add(DOMAIN, f"nonce:{second}:{call}", 1, 3, if_live="session")
            driver.window_add(DOMAIN, f"calls:{call % 10}", f"{second}:{call}", 1, 3)
        clock.advance(1)
    live = 2 * 3 * 100 + 1
    assert driver.state_count() <= live + 2 * 100
    # The heap of expiries holds one entry per key at most.
    assert len(driver._expiries) == len(driver._queued) <= driver.state_count() + 100


def test_one_write_reclaims_a_few_keys_not_all():
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    for i in range(10_000):
        driver.set(DOMAIN, f"k{i}", i, 1)
    clock.advance(2)
    driver.set(DOMAIN, "one", 1, 60)
    assert driver.state_count() == 10_001 - RECLAIM_STEP
    for _ in range(10_000 // RECLAIM_STEP + 1):
        driver.incr(DOMAIN, "writes", 1, 60)
    assert driver.state_count() == 2


def test_a_key_whose_expiry_moved_later_is_kept_and_reclaimed_later():
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    driver.set(DOMAIN, "session", 1, 10)
    for _ in range(5):  # touched: its expiry moves later each time
        clock.advance(8)
        assert driver.replace(DOMAIN, "session", 1, 10) is True
        driver.set(DOMAIN, "other", 1, 1)
    assert driver.get(DOMAIN, "session") == 1
    assert len(driver._expiries) <= 2  # one entry per key, pushed again lazily
    clock.advance(11)
    driver.set(DOMAIN, "w", 1, 60)
    assert driver.state_count() == 1
