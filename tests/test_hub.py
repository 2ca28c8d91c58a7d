"""A Hub that cannot be reached is found out once, and Hub calls then fail at once with a message
that says so, instead of retrying for half a minute."""

import socket

import pytest

from adapters import hub
from adapters.base_models import BaseModelError, load_base


def test_a_refused_connection_is_the_reason(no_hub):
    reason = hub.unreachable_reason()
    assert reason is not None and reason.startswith(f"127.0.0.1:{no_hub}: ") and "refused" in reason


def test_a_listening_host_is_reachable(monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.unreachable_reason.cache_clear()
        try:
            assert hub.unreachable_reason() is None
        finally:
            hub.unreachable_reason.cache_clear()


def test_hub_calls_run_offline_while_unreachable_and_not_after(no_hub):
    import datasets
    from huggingface_hub import constants

    with hub.offline_if_unreachable() as reason:
        assert reason and constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False


def test_asked_for_offline_mode_is_left_to_the_libraries(no_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with hub.offline_if_unreachable() as reason:
        assert reason is None  # HF_HUB_OFFLINE=1: nothing to say, the cache answers
    assert constants.HF_HUB_OFFLINE is True


def test_a_hub_base_model_with_no_hub_fails_at_once_saying_so(no_hub):
    with pytest.raises(BaseModelError) as caught:
        load_base("example-org/not-in-the-cache", progress=False)
    message = str(caught.value)
    assert f"the Hub is not reachable (127.0.0.1:{no_hub}: " in message
    assert "the Hugging Face cache does not hold example-org/not-in-the-cache" in message
