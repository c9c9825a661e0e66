"""A small schema registry on 127.0.0.1 speaking the Confluent REST protocol subset clients use.

No Confluent registry can run offline here, so tests run this real HTTP server and talk to it with
confluent-kafka's own ``SchemaRegistryClient`` and ``AvroSerializer``:

* ``GET /schemas/ids/{id}`` → ``{"schema": ..., "schemaType": ...}`` or 404 / error_code 40403;
* ``POST /subjects/{subject}/versions`` → ``{"id": n}`` (the same schema text gets the same id).

Id 500 always answers HTTP 500, to exercise "registry down" handling. ``requests`` records the
paths served.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LocalSchemaRegistry", "FAILING_ID"]

#: A schema id the registry always answers with HTTP 500.
FAILING_ID = 500


class LocalSchemaRegistry:
    """Context manager: ``with LocalSchemaRegistry() as registry: registry.url``."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's hook name
                registry.requests.append(self.path)
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                    schema_id = int(parts[2])
                    if schema_id == FAILING_ID:
                        return self._send(500, {"error_code": 50001, "message": "backend down"})
                    if schema_id in registry.schemas:
                        return self._send(200, registry.schemas[schema_id])
                    message = f"Schema {schema_id} not found"
                    return self._send(404, {"error_code": 40403, "message": message})
                return self._send(404, {"error_code": 404, "message": "Not found"})

            def do_POST(self):  # noqa: N802
                registry.requests.append(self.path)
                parts = self.path.split("?")[0].strip("/").split("/")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                    schema_id = registry.register(body["schema"], body.get("schemaType"))
                    return self._send(200, {"id": schema_id})
                return self._send(404, {"error_code": 404, "message": "Not found"})

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def register(self, schema: str | dict, schema_type: str | None = None) -> int:
        """Store a schema (JSON text or dict); returns its id, reusing ids for equal text."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        entry = {"schema": text, **({"schemaType": schema_type} if schema_type else {})}
        with self._lock:
            for schema_id, known in self.schemas.items():
                if known == entry:
                    return schema_id
            schema_id = len(self.schemas) + 1
            self.schemas[schema_id] = entry
            return schema_id

    def __enter__(self) -> LocalSchemaRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
