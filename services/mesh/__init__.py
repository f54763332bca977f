"""Runs the whole mesh on one machine: Envoy, the router and an inference server (`make run`)."""
