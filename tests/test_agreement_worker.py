"""The agreement page's figures computed by a real Celery worker, asked through a real Redis."""

from __future__ import annotations

import pytest

from tests.test_generation_e2e import Site
from tests.workers import celery_worker

pytestmark = pytest.mark.e2e

# What the page asks, run as the web process would: the figures, and whether they are stale.
ASK = (
    "from curation.lead import insights; f = insights.agreement_figures(); "
    "print('report' if f.report else 'none', 'stale' if f.stale else 'fresh', f.note or '-')"
)


def ask(site: Site) -> list[str]:
    return site.manage("shell", "--no-imports", "-c", ASK).splitlines()[-1].split()


def test_a_worker_computes_the_figures_the_page_asked_for(tmp_path, redis_url):
    import redis

    broker = redis_url.rsplit("/", 1)[0] + "/11"  # a queue of its own
    redis.Redis.from_url(broker).flushdb()
    site = Site(tmp_path, broker, teacher_url="http://127.0.0.1:9/v1")
    site.env["EXTES_LEAD_FIGURES_INLINE_MAX"] = "-1"  # always the worker's, even with no labels
    try:
        assert ask(site) == ["none", "stale", "-"]  # nothing yet, a worker asked
        assert site.query("SELECT payload IS NULL, requested_at IS NOT NULL "
                          "FROM curation_figuresnapshot") == [(1, 1)]  # fmt: skip
        site.workers.append(
            celery_worker("default", site.env, site.data / "figures.log", ("threads", "1"), "fig")
        )

        def computed() -> bool:
            return site.query(
                "SELECT payload IS NOT NULL FROM curation_figuresnapshot WHERE name = 'agreement'"
            ) == [(1,)]

        site.wait_for(computed, timeout=120, what="the worker's figures")
        assert ask(site) == ["report", "fresh", "-"]
    finally:
        site.stop()
        redis.Redis.from_url(broker).flushdb()
