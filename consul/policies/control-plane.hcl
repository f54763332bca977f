# ACL policy for the Envoy control plane's token (gateway/, service "control-plane").
# It registers itself, and reads every service, its healthy instances and their nodes
# to build Envoy's clusters and endpoints.

service "control-plane" {
  policy = "write"
}

service_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
