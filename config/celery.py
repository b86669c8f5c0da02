from __future__ import annotations

import os

from celery import Celery
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("extes")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# What sending a task raises when the broker cannot be reached: kombu re-raises redis' connection
# errors as this, after Celery's publish retries (under a second against a refusing server).
BrokerUnreachable = OperationalError
QUEUE_UNREACHABLE = "The job queue (Redis) cannot be reached, so nothing was started."
