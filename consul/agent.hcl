# The Consul agent of the docker-compose deployment: a single server that is its own
# cluster, with the UI, and ACLs on with default deny, so each infermesh service can only
# do what its token's policy (consul/policies/*.hcl) allows.
#
# Loaded by compose as `-config-file=/consul/config/infermesh/agent.hcl` (the directory
# also holds ACL policies and config entries, which are not agent configuration). It also works
# under `agent -dev`, but -dev keeps state in memory and ACL tokens are then lost on
# restart: run it without -dev, with /consul/data on a volume.
#
# After the first start, once:
#   consul acl bootstrap                                   # the management token
#   consul acl policy create -name agent -rules @policies/agent.hcl
#   consul acl token create -policy-name agent             # then: consul acl set-agent-token agent <SecretID>
#   for role in router gateway inference provider registry vector jobs; do
#     consul acl policy create -name "$role" -rules @"policies/$role.hcl"
#     consul acl token create -description "infermesh $role" -policy-name "$role"
#   done
#   consul config write config-entries/proxy-defaults.hcl    # the services speak gRPC
# and give each service its token as CONSUL_HTTP_TOKEN (from .env, never committed).

node_name   = "consul"
datacenter  = "dc1"
data_dir    = "/consul/data"
server      = true
# One server, no quorum to wait for. (bootstrap_expect = 1 would mean the same but is
# refused under -dev; bootstrap = true is accepted by both.)
bootstrap   = true
# The HTTP API (8500) and DNS must be reachable from the other containers, not just
# from inside this one.
client_addr = "0.0.0.0"

ui_config {
  enabled = true
}

acl {
  enabled                  = true
  # Nothing is allowed unless a token's policy says so: an anonymous request sees an
  # empty catalog and cannot register.
  default_policy           = "deny"
  # If the servers cannot be reached to resolve a token, keep using what it resolved to
  # before rather than denying everything: an outage should not deregister the mesh.
  down_policy              = "extend-cache"
  # Tokens set with `consul acl set-agent-token` survive restarts (needs data_dir).
  enable_token_persistence = true
}

performance {
  # Production timing (the default of 5 is for slow development machines): a failed
  # leader is noticed in about a second instead of five.
  raft_multiplier = 1
}

telemetry {
  # Metrics for Prometheus at /v1/agent/metrics?format=prometheus.
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
