"""The gateway's xDS control plane: Envoy's clusters and routes, computed from the catalog
(resources.py) and served over one ADS stream per Envoy (server.py), pushed again
whenever the catalog changes, so Envoy follows replicas and models without a restart."""
