"""Fixtures shared by unit tests: a fake clock and a progress registry driven by it."""

from __future__ import annotations

import pytest

from transforms.kafka.commit_trail import TRAIL
from transforms.progress import ProgressRegistry


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> ProgressRegistry:
    return ProgressRegistry(clock=clock)


@pytest.fixture(autouse=True)
def _fresh_commit_trail():
    """Fake clusters reuse names (``fake:9092``, group ``g``): each test starts with no trail."""
    TRAIL.clear()
    yield
    TRAIL.clear()
