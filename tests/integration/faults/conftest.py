"""Fault tests that stop and edit a broker get one of their own (``tests/private_broker.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from private_broker import PrivateBroker


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "stack")
    broker.stack("up", "kafka")
    try:
        yield broker
    finally:
        broker.stack("down")
