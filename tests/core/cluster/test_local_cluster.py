"""The local dask cluster is started again once when it misses its start-up window."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from napari_focsam.core.cluster import _local  # noqa: E402


class FlakyCluster:
    """Stands in for ``distributed.LocalCluster``: the first ``fails`` starts raise as
    distributed does when its event loop thread misses the 10 s window."""

    def __init__(self, fails: int):
        self.fails, self.calls = fails, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if len(self.calls) <= self.fails:
            raise AssertionError()
        return "cluster"


@pytest.fixture
def flaky(monkeypatch):
    import distributed

    def make(fails):
        fake = FlakyCluster(fails)
        monkeypatch.setattr(distributed, "LocalCluster", fake)
        monkeypatch.setattr(_local, "local_security", lambda: "tls")
        return fake

    return make


def test_a_cluster_that_misses_its_start_once_is_started_again(flaky, caplog):
    fake = flaky(1)
    with caplog.at_level("WARNING", logger="napari_focsam.core.cluster"):
        assert _local.local_cluster(2, {"OMP_NUM_THREADS": "1"}) == "cluster"
    assert len(fake.calls) == 2 and "starting it again" in caplog.text
    kw = fake.calls[-1]
    assert kw["n_workers"] == 2 and kw["host"] == "127.0.0.1" and kw["security"] == "tls"
    assert kw["env"] == {"OMP_NUM_THREADS": "1"} and kw["dashboard_address"] is None


def test_a_cluster_that_never_starts_is_one_clear_error(flaky):
    fake = flaky(5)
    with pytest.raises(ConnectionError, match="did not start .*try fewer --workers"):
        _local.local_cluster(1, {})
    assert len(fake.calls) == _local.LOCAL_START_TRIES


def test_missing_cryptography_is_not_retried(flaky, monkeypatch):
    fake = flaky(0)

    def no_tls():
        raise ValueError("needs the 'cryptography' package")

    monkeypatch.setattr(_local, "local_security", no_tls)
    with pytest.raises(ValueError, match="cryptography"):
        _local.local_cluster(1, {})
    assert fake.calls == []
