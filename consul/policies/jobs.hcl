# ACL policy for the jobs service's token (service "jobs"). It writes its own
# registration, and reads the catalog to find a router to send batch requests through
# (reading an instance's health needs its node too).

service "jobs" {
  policy = "write"
}

service "router" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
