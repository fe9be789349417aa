"""A tiny fake Bot Connector (and OpenID metadata) on loopback, for scripts/e2e-mcp-peers.sh.

usage: python3 fake_connector.py PORT RECORD_FILE

- POST .../_connector/v3/conversations/{id}/activities[/{replyTo}] -> 201 {"id": "fake-N"}
- PUT  .../_connector/v3/conversations/{id}/activities/{activityId} -> 200 {"id": activityId}
- DELETE the same                                                     -> 200 {}
- POST .../_connector/v3/conversations (create a 1:1)                 -> 201 {"id": "a:fake-1on1-N"}
- GET  .../_connector/v3/conversations/{id}/members                   -> 200 []
- GET  /v1/.well-known/openidconfiguration, /v1/keys: metadata and the key set in the file named by
  $E2E_JWKS (the e2e script's signing key, endorsed for msteams), else an empty key set (agentgate --dev
  accepts anonymous loopback requests; the key cache only needs somewhere local to ask)
Every request to /_connector is appended to RECORD_FILE as one JSON line:
{"method", "path", "conversation", "authorization", "body", "status", "response"}. Prints "fake connector on PORT" when ready.
"""
import itertools
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

PORT = int(sys.argv[1])
RECORD = sys.argv[2]
LOCK = threading.Lock()
COUNTER = itertools.count(1)
PREFIX = "/_connector/v3/conversations"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the record file is the log
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, body, status, response):
        rest = self.path[len(PREFIX):].lstrip("/")
        conversation = unquote(rest.split("/")[0]) if rest else ""
        entry = {
            "method": self.command,
            "path": self.path,
            "conversation": conversation,
            "authorization": self.headers.get("Authorization", ""),
            "body": body,
            "status": status,
            "response": response,
        }
        with LOCK, open(RECORD, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def handle_any(self):
        body = self.read_body()
        path = self.path.split("?")[0]
        if self.command == "GET" and path == "/v1/.well-known/openidconfiguration":
            return self.reply(200, {"issuer": "https://api.botframework.com",
                                    "jwks_uri": f"http://127.0.0.1:{PORT}/v1/keys",
                                    "id_token_signing_alg_values_supported": ["RS256"]})
        if self.command == "GET" and path == "/v1/keys":
            jwks = os.environ.get("E2E_JWKS")
            if jwks:
                with open(jwks, encoding="utf-8") as f:
                    return self.reply(200, json.load(f))
            return self.reply(200, {"keys": []})
        if not path.startswith(PREFIX):
            return self.reply(404, {"error": {"code": "NotFound", "message": path}})
        parts = [p for p in path[len(PREFIX):].split("/") if p]
        n = next(COUNTER)
        if self.command == "POST" and not parts:
            status, response = 201, {"id": f"a:fake-1on1-{n}"}
        elif self.command == "POST" and len(parts) >= 2 and parts[1] == "activities":
            status, response = 201, {"id": f"fake-{n}"}
        elif self.command == "PUT" and len(parts) == 3 and parts[1] == "activities":
            status, response = 200, {"id": unquote(parts[2])}
        elif self.command == "DELETE" and len(parts) == 3 and parts[1] == "activities":
            status, response = 200, {}
        elif self.command == "GET" and len(parts) >= 2 and parts[1] == "members":
            status, response = 200, []
        else:
            status, response = 400, {"error": {"code": "BadArgument", "message": f"{self.command} {path}"}}
        self.record(body, status, response)
        return self.reply(status, response)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    print(f"fake connector on {PORT}", flush=True)
    server.serve_forever()
