"""Certificates for the TLS tests, generated once per session under a temporary directory."""

from __future__ import annotations

import pytest

from server.tools.certs import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
