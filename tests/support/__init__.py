"""What the tests share: where things are, ports, one in-process server runner
(`serving`), one polling helper (`eventually`), the mesh's services in this process,
stand-ins for what cannot run here (Consul, hosted providers, an OTLP collector),
throwaway database servers, and whole meshes.

Imported as `support.<module>`: tests/ is on sys.path because tests/conftest.py sits
there (pytest's rootdir-based "prepend" import mode), so this works from any tier alone.
"""
