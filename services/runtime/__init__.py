"""The runtime kit every infermesh service is built on: settings, server factory,
health, reflection, error mapping, metrics, tracing and graceful shutdown."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("infermesh")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
