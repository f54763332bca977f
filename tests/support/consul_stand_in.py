"""A stand-in for a Consul agent's HTTP API, for tests on machines where Consul cannot run
(no binary can be installed here). It serves, in a thread, the part of the documented API
(developer.hashicorp.com/consul/api-docs) that the mesh uses, with Consul's semantics:

- PUT /v1/agent/service/register: field names matched case-insensitively (snake_case too),
  as Consul's decoder does; Name required; meta limits (64 pairs, keys of at most 128
  characters of [A-Za-z0-9_-], values of at most 512); a check gets ID `service:<id>`
  (`service:<id>:<n>` when there are several), starts critical unless it says `Status`,
  and keeps its status when the service registers again; interval required for gRPC checks.
- PUT /v1/agent/service/deregister/<id> (404 for an unknown ID).
- GET /v1/catalog/services and GET /v1/health/service/<name> (`?passing`: only entries
  whose every check, the node's serfHealth included, passes); the agent's own `consul`
  service is listed, untagged, as a real agent's is.
- Blocking queries: `?index=N&wait=D` answers once the index moves past N or D elapses; one
  index for all state, so (as in Consul) it may move without the result changing. Every
  read carries X-Consul-Index.
- ACLs (when `token` is set; default deny): writes need the token (403 otherwise); reads
  with no token are filtered to nothing and say so in X-Consul-Results-Filtered-By-ACLs;
  an unknown token is 403 "ACL not found".
- gRPC checks: with `probe_grpc`, each check's target is asked grpc.health.v1 Check every
  `probe_interval` seconds (Consul uses the registered Interval; tests want it faster);
  SERVING passes, anything else or no answer is critical. `set_check` pins a status.

Not modelled: other endpoints, DeregisterCriticalServiceAfter, anti-entropy, several nodes.
`stop()` drops open connections the way a dying agent does; `start()` again (same port,
same state) brings it back.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

NODE = {
    "ID": "8b4dd4a6-0000-4000-8000-000000000001",
    "Node": "stand-in",
    "Address": "127.0.0.1",
    "Datacenter": "dc1",
    "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
    "Meta": {},
}
SERF_CHECK = {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "Type": ""}
CONSUL_SERVICE = {"ID": "consul", "Service": "consul", "Tags": [], "Address": "", "Port": 8300, "Meta": {}}
META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DURATION = re.compile(r"([\d.]+)(ns|us|µs|ms|s|m|h)")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None
    received: float = field(default_factory=time.monotonic)
    answered: float | None = None  # None: no answer (the agent went away)


class ConsulStandIn:
    def __init__(
        self, *, port: int = 0, token: str | None = None, probe_grpc: bool = False, probe_interval: float = 0.05
    ) -> None:
        self.token = token
        self.requests: list[Request] = []
        self._probe_grpc = probe_grpc
        self._probe_interval = probe_interval
        self._state = threading.Condition()
        self._index = 10
        self._services: dict[str, dict[str, Any]] = {}
        self._checks: dict[str, dict[str, Any]] = {}
        self._pinned: set[str] = set()
        self._channels: dict[str, grpc.Channel] = {}
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._closing = False
        self.port = port  # 0: the kernel picks; kept across stop() and start()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> ConsulStandIn:
        self._closing = False
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.stand_in = self  # type: ignore[attr-defined]
        self._server, self.port = server, server.server_address[1]
        self._threads = [
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="consul-stand-in"
            )
        ]
        if self._probe_grpc:
            self._threads.append(threading.Thread(target=self._probe, daemon=True, name="consul-stand-in-probe"))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        with self._state:
            self._closing = True
            self._state.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> ConsulStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- what tests look at and change ---------------------------------------------

    def registered(self, service_id: str) -> dict[str, Any] | None:
        with self._state:
            service = self._services.get(service_id)
            return json.loads(json.dumps(service)) if service else None

    def checks_of(self, service_id: str) -> list[dict[str, Any]]:
        with self._state:
            return [dict(c) for c in self._checks.values() if c["ServiceID"] == service_id]

    def set_check(self, service_id: str, status: str) -> None:
        """Pin every check of this service to `status` (passing, warning or critical)."""
        with self._state:
            for check in self._checks.values():
                if check["ServiceID"] == service_id:
                    check["Status"] = status
                    self._pinned.add(check["CheckID"])
            self._bump()

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method == "PUT"]

    # -- state (callers hold self._state) ------------------------------------------

    def _bump(self) -> None:
        self._index += 1
        self._state.notify_all()

    def register(self, body: Mapping[str, Any], query: Mapping[str, str]) -> tuple[int, str]:
        name = _field(body, "Name")
        if not name:
            return 400, "Missing service name"
        meta = _field(body, "Meta") or {}
        if len(meta) > 64:
            return 400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
        for key, value in meta.items():
            if not META_KEY.match(key):
                return 400, f"Invalid Service Meta: Key contains invalid characters: {key!r}"
            if len(str(value)) > 512:
                return 400, f"Invalid Service Meta: Value is too long (limit: 512 characters): {key!r}"
        service_id = _field(body, "ID") or name
        service = {
            "ID": service_id,
            "Service": name,
            "Tags": list(_field(body, "Tags") or []),
            "Address": _field(body, "Address") or "",
            "Port": int(_field(body, "Port") or 0),
            "Meta": {k: str(v) for k, v in meta.items()},
        }
        definitions = list(_field(body, "Checks") or [])
        if (single := _field(body, "Check")) is not None:
            definitions.insert(0, single)
        checks = {}
        for n, definition in enumerate(definitions, start=1):
            grpc_target = _field(definition, "GRPC")
            if grpc_target and not _seconds(_field(definition, "Interval") or "0s"):
                return 400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks"
            check_id = _field(definition, "CheckID", "ID") or (
                f"service:{service_id}" + (f":{n}" if len(definitions) > 1 else "")
            )
            with self._state:  # a check registered again keeps its status
                with_status = self._checks.get(check_id, {}).get("Status") or _field(definition, "Status") or "critical"
            checks[check_id] = {
                "CheckID": check_id,
                "Name": _field(definition, "Name") or f"Service '{name}' check",
                "Status": with_status,
                "ServiceID": service_id,
                "ServiceName": name,
                "Type": "grpc" if grpc_target else "",
                "Definition": {
                    "GRPC": grpc_target,
                    "GRPCUseTLS": bool(_field(definition, "GRPCUseTLS")),
                    "Interval": _field(definition, "Interval") or "",
                    "Timeout": _field(definition, "Timeout") or "",
                    "DeregisterCriticalServiceAfter": _field(definition, "DeregisterCriticalServiceAfter") or "",
                },
            }
        with self._state:
            if query.get("replace-existing-checks") in ("true", "1"):
                self._drop_checks(service_id)
            self._services[service_id] = service
            self._checks.update(checks)
            self._bump()
        return 200, ""

    def deregister(self, service_id: str) -> tuple[int, str]:
        with self._state:
            if self._services.pop(service_id, None) is None:
                return 404, f'Unknown service ID "{service_id}". Ensure the service ID is passed, not the service name.'
            self._drop_checks(service_id)
            self._bump()
        return 200, ""

    def _drop_checks(self, service_id: str) -> None:
        for check_id in [c for c, check in self._checks.items() if check["ServiceID"] == service_id]:
            del self._checks[check_id]
            self._pinned.discard(check_id)

    def catalog_services(self) -> dict[str, list[str]]:
        found: dict[str, set[str]] = {"consul": set()}
        for service in self._services.values():
            found.setdefault(service["Service"], set()).update(service["Tags"])
        return {name: sorted(tags) for name, tags in found.items()}

    def health_service(self, name: str, passing: bool) -> list[dict[str, Any]]:
        entries = []
        services = [CONSUL_SERVICE] if name == "consul" else []
        services += [s for s in self._services.values() if s["Service"] == name]
        for service in services:
            checks = [{**SERF_CHECK, "Node": NODE["Node"], "ServiceID": "", "ServiceName": ""}]
            checks += [
                {k: v for k, v in c.items() if k != "Definition"} | {"Node": NODE["Node"]}
                for c in self._checks.values()
                if c["ServiceID"] == service["ID"]
            ]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            entries.append({"Node": dict(NODE), "Service": dict(service), "Checks": checks})
        return entries

    def block(self, query: Mapping[str, str]) -> bool:
        """Hold a blocking query until the index passes the client's or its wait ends;
        False when the agent is going away (the connection is then dropped)."""
        if "index" not in query:
            return True
        seen = int(query["index"])
        deadline = time.monotonic() + min(_seconds(query.get("wait", "5m")), 600.0)
        with self._state:
            while self._index <= seen and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            return not self._closing

    # -- gRPC health probing --------------------------------------------------------

    def _probe(self) -> None:
        while not self._closing:
            with self._state:
                targets = {
                    c["CheckID"]: c["Definition"]["GRPC"]
                    for c in self._checks.values()
                    if c["Definition"]["GRPC"] and c["CheckID"] not in self._pinned
                }
            results = {check_id: self._grpc_status(target) for check_id, target in targets.items()}
            with self._state:
                changed = False
                for check_id, status in results.items():
                    check = self._checks.get(check_id)
                    if check is not None and check_id not in self._pinned and check["Status"] != status:
                        check["Status"], changed = status, True
                if changed:
                    self._bump()
            time.sleep(self._probe_interval)

    def _grpc_status(self, target: str) -> str:
        address, _, service = target.partition("/")
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=max(self._probe_interval * 10, 0.5)
            )
        except grpc.RpcError:
            return "critical"
        return "passing" if reply.status == health_pb2.HealthCheckResponse.SERVING else "critical"


class _Server(ThreadingHTTPServer):
    # Every watcher's blocking queries come back at once when the index moves and all
    # reconnect together: with socketserver's backlog of 5 the kernel drops the rest of
    # the burst's SYNs and they retry a second later. Consul (Go) listens with the OS's.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    _request: Request | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    @property
    def stand_in(self) -> ConsulStandIn:
        return self.server.stand_in  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            self._reply(400, f"Request decode failed: {raw[:80]!r}")
            return
        stand_in = self.stand_in
        self._request = Request(method, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        stand_in.requests.append(self._request)
        token = self.headers.get("X-Consul-Token")
        if stand_in.token is not None and token not in (None, stand_in.token):
            self._reply(403, "ACL not found")
            return
        anonymous = stand_in.token is not None and token is None

        if method == "PUT" and path == "/v1/agent/service/register":
            if anonymous:
                name = _field(body or {}, "Name")
                self._reply(403, f"Permission denied: anonymous token lacks permission 'service:write' on \"{name}\"")
                return
            self._reply(*stand_in.register(body or {}, query))
        elif method == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            if anonymous:
                self._reply(403, "Permission denied: anonymous token lacks permission 'service:write'")
                return
            self._reply(*stand_in.deregister(path.removeprefix("/v1/agent/service/deregister/")))
        elif method == "GET" and path == "/v1/catalog/services":
            self._read(query, anonymous, lambda: stand_in.catalog_services(), {})
        elif method == "GET" and path.startswith("/v1/health/service/"):
            name = path.removeprefix("/v1/health/service/")
            self._read(query, anonymous, lambda: stand_in.health_service(name, "passing" in query), [])
        else:
            self._reply(404 if method == "GET" else 405, "")

    def _read(self, query: Mapping[str, str], anonymous: bool, answer: Any, nothing: Any) -> None:
        stand_in = self.stand_in
        if not stand_in.block(query):
            self.close_connection = True  # the agent went away mid-query: no answer
            return
        with stand_in._state:
            data, index = (nothing if anonymous else answer()), stand_in._index
        headers = {"X-Consul-Index": str(index), "X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        if anonymous:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        self._reply(200, json.dumps(data), headers, content_type="application/json")

    def _reply(
        self,
        status: int,
        body: str,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        encoded = body.encode()
        if self._request is not None:
            self._request.answered = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client went away
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(encoded)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(encoded)


def _field(obj: Mapping[str, Any], *names: str) -> Any:
    """A field matched as Consul's decoder does: any case, snake_case accepted."""
    wanted = {name.lower().replace("_", "") for name in names}
    for key, value in obj.items():
        if key.lower().replace("_", "") in wanted:
            return value
    return None


def _seconds(duration: str) -> float:
    return sum(float(n) * UNITS[u] for n, u in DURATION.findall(duration))
