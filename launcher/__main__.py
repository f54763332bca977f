"""`make run`: start the whole mesh in the foreground, restart what dies (launcher/supervision.py);
Ctrl-C stops it cleanly."""

from __future__ import annotations

import logging
import signal
import sys
import time

from prometheus_client import start_http_server

from launcher.mesh import Mesh
from launcher.settings import MeshSettings

USAGE = """
infermesh is ready in {seconds:.1f}s. Front door: http://{host}:{port}  (Envoy admin: http://{host}:{admin})

  curl -s {host}:{port}/v1/generate-text{auth} -d '{{"model":"gemma-3-270m","prompt":"The capital of France is","config":{{"max_tokens":16}}}}'
  curl -sN {host}:{port}/v1/generate-text:stream{auth} -d '{{"model":"gemma-3-270m","prompt":"The capital of France is","config":{{"max_tokens":16}}}}'
  curl -s {host}:{port}/v1/embed{auth} -d '{{"model":"all-minilm-l6-v2","inputs":["hello world"]}}'
  grpcurl -plaintext {host}:{port} list
  OpenAI SDK: OpenAI(base_url="http://{host}:{port}/v1", api_key={sdk_key})

Ctrl-C stops everything.
"""
AUTH_HEADER = ' -H "authorization: Bearer $INFERMESH_API_KEY"'
FIRST_KEY = """Authorization is on. The admin API key, shown this once (only its hash is kept):

  export INFERMESH_API_KEY={secret}

Send it as `Authorization: Bearer <key>`; issue others with POST /v1/registry/apiKeys,
another admin key with `make admin-key`. `MESH_AUTH=false make run` turns authorization off.
"""
KEY_NEEDED = """Authorization is on: send an API key (`export INFERMESH_API_KEY=<key>`; the first start printed
an admin key; `make admin-key` issues another). `MESH_AUTH=false make run` turns it off.
"""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mesh %(levelname)s %(message)s")
    settings = MeshSettings()
    mesh = Mesh(settings)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    code = 0
    try:
        mesh.start()
        print("starting: Envoy, router, inference server (first start converts Gemma's weights once)", flush=True)
        seconds = mesh.wait_ready(progress=True, interrupted=lambda: stopping)
        usage = USAGE.format(
            seconds=seconds,
            host=settings.host,
            port=settings.front_door_port,
            admin=settings.admin_port,
            auth=AUTH_HEADER if settings.auth else "",
            sdk_key='os.environ["INFERMESH_API_KEY"]' if settings.auth else '"unused"',
        )
        print(usage, flush=True)
        if settings.auth:
            secret = mesh.ensure_admin_key()
            print(FIRST_KEY.format(secret=secret) if secret else KEY_NEEDED, flush=True)
        if settings.launcher_metrics_port:
            start_http_server(settings.launcher_metrics_port, addr=settings.host)
        # From here on a child that dies is restarted (launcher/supervision.py); only a
        # failed start-up above stops the mesh.
        while not stopping:
            mesh.supervise()
            time.sleep(0.5)
    except (RuntimeError, TimeoutError) as exc:
        print(f"start-up failed: {exc}", flush=True)
        code = 1
    finally:
        print("stopping...", flush=True)
        mesh.stop()
        print("stopped", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
