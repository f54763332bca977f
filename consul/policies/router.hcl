# ACL policy for the router's token (CONSUL_HTTP_TOKEN of the router service).
# It registers itself as service "router", and reads the catalog to find the backends
# (inference servers, provider adapters, the registry) and their health; reading an
# instance's health needs its node too.

service "router" {
  policy = "write"
}

service_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
