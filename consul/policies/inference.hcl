# ACL policy for the inference servers' token (service "inference"; every replica
# registers under that name with its own ID). They write their own registration (and
# its gRPC health check) and read nothing: they do not discover anyone.

service "inference" {
  policy = "write"
}
