"""A slow machine for one test worker: with this folder first on PYTHONPATH, every Celery pool
process spends P2SAM_TEST_SLOW_START_S seconds more in worker_process_init, as a model preload
does on a loaded host (the real preload runs too). Test code only; nothing shipped imports it."""
import os
import time

from celery.signals import worker_process_init


@worker_process_init.connect(weak=False)
def _slow_start(**_):
    time.sleep(float(os.environ.get("P2SAM_TEST_SLOW_START_S", "8")))
