"""Fixtures: the real ``maosic-server`` on a random port with a fresh SQLite database, a signed-up
account, and ``maosic-agent`` on the virtual lab (1000× clock), enrolled with a one-time token —
all through :func:`maosic.local.start_local_lab`.

The binaries come from ``$MAOSIC_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else
``/var/tmp/maosic-target/debug`` (what ``scripts/test`` builds)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from maosic.local import LocalLab, start_local_lab

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLab]:
    try:
        lab = start_local_lab(REPO, directory=tmp_path_factory.mktemp("maosic"))
    except FileNotFoundError as e:
        pytest.fail(str(e))
    with lab:
        yield lab


@pytest.fixture(scope="session")
def recipe() -> str:
    return (REPO / "examples/chirality.recipe").read_text()
