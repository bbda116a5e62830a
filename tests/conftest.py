import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running fake Hub that huggingface_hub talks to, and an empty range cache."""
    from hub_server import FakeHub
    from huggingface_hub import constants

    from awm.readers import hub

    monkeypatch.setenv(hub.HUB_CACHE_ENV, str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "RETRY_WAIT_S", 0.0)
    with FakeHub() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        yield server
