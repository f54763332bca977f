# ACL policy for the Consul agent's own token (`consul acl set-agent-token agent ...`):
# it registers its node and keeps the catalog in step with the services registered on
# it (anti-entropy), which needs to read them. Least privilege: its own node only.

node "consul" {
  policy = "write"
}

service_prefix "" {
  policy = "read"
}
