"""`make admin-key`: issue a new admin API key for the running mesh (a lost first key, or
one per operator) and print it once. It asks the registry on its own port, which only
this machine reaches; the new key can then issue and revoke others over the API."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import grpc

from launcher.mesh import issue_admin_key
from launcher.settings import MeshSettings


def main() -> None:
    settings = MeshSettings()
    key_id = "admin-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    try:
        secret = issue_admin_key(settings, key_id, "issued by make admin-key")
    except grpc.RpcError as error:
        sys.exit(
            f"could not reach the registry at {settings.host}:{settings.registry_port} (is the mesh running?): "
            f"{error.details()}"
        )
    print(f"apiKeys/{key_id}, shown this once (only its hash is kept):\n\n  export INFERMESH_API_KEY={secret}\n")


if __name__ == "__main__":
    main()
