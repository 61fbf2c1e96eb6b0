"""HTTP routes, one module per resource. Handlers validate, authorise, audit and delegate.

Batches (POST/GET /v1/batches, queue ``batch``) plug in here as ``routes/batches.py``.
"""

from . import health, jobs, models, uploads

ROUTERS = [health.router, uploads.router, jobs.router, models.router]
