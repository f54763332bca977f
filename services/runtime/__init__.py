"""The runtime kit every infermesh service is built on: settings, server factory,
health, reflection, error mapping, metrics, tracing and graceful shutdown."""
