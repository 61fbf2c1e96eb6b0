"""The application: settings, the job function (pipeline), outputs and the `p2sam` command."""

__version__ = "0.1.0"
