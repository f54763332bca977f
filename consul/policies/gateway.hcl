# ACL policy for the gateway's token (gateway/, service "gateway": Envoy's control plane).
# It registers itself, and reads every service, its healthy instances and their nodes
# to build Envoy's clusters and endpoints.

service "gateway" {
  policy = "write"
}

service_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
