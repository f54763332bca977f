# Defaults for every infermesh service (a Consul config entry, not agent configuration:
# it lives outside the agent's config file; apply once with
#   consul config write consul/config-entries/proxy-defaults.hcl
# using a management token). The services speak gRPC (HTTP/2): saying so lets Consul's
# UI, intentions and any Consul-managed proxy treat their traffic as gRPC, not opaque TCP.
# Envoy in front of the mesh is configured by infermesh's gateway (its xDS), not Consul
# Connect, so nothing else is set here.
Kind     = "proxy-defaults"
Name     = "global"
Config {
  protocol = "grpc"
}
