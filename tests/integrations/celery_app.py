"""The Celery app the worker of test_celery.py runs (`celery -A celery_app worker`): everything through Redis
(TEST_REDIS_URL), and tasks on ProgressTask."""

import os
import time

from celery import Celery

from progress_engine.integrations.celery import ProgressTask

REDIS = os.environ["TEST_REDIS_URL"]
app = Celery("celery_app", broker=REDIS, backend=REDIS)
# A short throttle so that steps 100 ms apart each reach Redis as their own write.
app.conf.progress_engine = {"redis_url": REDIS, "throttle_ms": 10}
app.conf.broker_connection_retry_on_startup = True


@app.task(base=ProgressTask, bind=True)
def count(self, n, delay, fail_at=None):
    """n steps `delay` s apart; even steps carry a message (an engine call), odd ones do not (the step counter).
    Logs and returns the pid of the pool child that runs it."""
    self.log("info", f"pid {os.getpid()}")
    for i in range(1, n + 1):
        time.sleep(delay)
        if i == fail_at:
            raise ValueError(f"boom at step {i}")
        self.progress(i, n, message=f"step {i}/{n}" if i % 2 == 0 else None)
    self.stage("finalizing", "saving")
    return os.getpid()


@app.task(base=ProgressTask, bind=True, progress_template="render-v1")
def render(self):
    self.progress(1, 2)
    return os.getpid()


@app.task(base=ProgressTask, bind=True)
def hand_on(self):
    """Replaced by a plain task under its id: Celery ends this run with Ignore."""
    self.progress(1, 2)
    raise self.replace(tail.si())


@app.task
def tail():
    return "tail"


@app.task(base=ProgressTask, bind=True, acks_late=True)
def refuse(self):
    from celery.exceptions import Reject
    self.progress(1, 2)
    raise Reject("bad payload", requeue=False)
