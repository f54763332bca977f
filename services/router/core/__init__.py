"""The router's logic without a transport: which model and backend answer a call, falling
back, cooling down, caching, metering and limits, and calls made of several calls. It
knows nothing of gRPC: the servicers beside it read a call into a CallContext, hand the
core typed requests, and send what it answers; backends are reached through a
BackendClient (backend_client.py beside it calls them through Envoy)."""
