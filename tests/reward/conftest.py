"""Make the repo root importable without an install, and give each test fresh metrics."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reward import metrics  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.reset()
    yield
