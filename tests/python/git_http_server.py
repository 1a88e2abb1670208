"""A git smart-HTTP server for tests: `git http-backend` behind HTTP Basic
authentication, so Gantry's remote credentials are exercised against a real
server. Usage: git_http_server.py ROOT PORT USER TOKEN [READER READ_TOKEN].
USER may fetch and push; READER, when given, may fetch only (a push is
403). It prints "ready" once listening, and serves until killed.
"""

import base64
import http.server
import os
import subprocess
import sys

ROOT, PORT, USER, TOKEN = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
EXPECTED = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
READER = sys.argv[5:7]
READ_ONLY = (
    "Basic " + base64.b64encode(f"{READER[0]}:{READER[1]}".encode()).decode()
    if len(READER) == 2
    else None
)
BACKEND = os.path.join(
    subprocess.check_output(["git", "--exec-path"], text=True).strip(),
    "git-http-backend",
)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def serve(self):
        data = self.body() if self.command == "POST" else b""
        given = self.headers.get("Authorization")
        if READ_ONLY is not None and given == READ_ONLY:
            if "git-receive-pack" in self.path:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        elif given != EXPECTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = dict(
            os.environ,
            GIT_PROJECT_ROOT=ROOT,
            GIT_HTTP_EXPORT_ALL="1",
            REMOTE_USER=USER,
            REQUEST_METHOD=self.command,
            PATH_INFO=path,
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(data)),
            GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
        )
        out = subprocess.run([BACKEND], input=data, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = serve
    do_POST = serve


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
