# ACL policy for the vector service's token (service "vector"). It writes its own
# registration, and reads the catalog to find a router to embed texts with (reading an
# instance's health needs its node too).

service "vector" {
  policy = "write"
}

service "router" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
