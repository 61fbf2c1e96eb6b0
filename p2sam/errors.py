"""Errors of a job's request that are the caller's to fix (the API answers them with 422)."""


class JobInputError(ValueError):
    """A job asks for something this service cannot do as asked (unknown model, missing head, ...)."""
