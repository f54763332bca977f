# ACL policy for the model registry's token (service "registry"). It writes its own
# registration and reads nothing from the catalog.

service "registry" {
  policy = "write"
}
