"""Tests on one mesh set up the way a production deployment runs: authorization on (API
keys, OIDC tokens), rate limits and token quotas counted in a real redis-server, a
second gateway replica, and every process traced into a collector. The package's tests
share it (conftest.py); being a package, it stops after the last of them."""
