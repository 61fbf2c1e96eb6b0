"""HTTP routes, one module per resource. Handlers validate, authorise, audit and delegate."""

from . import batches, health, jobs, models, review_page, reviews, uploads

ROUTERS = [health.router, uploads.router, jobs.router, reviews.router, batches.router, models.router, review_page.router]
