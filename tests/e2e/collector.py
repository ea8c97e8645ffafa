#!/usr/bin/env python3
"""Scriptable Segment-compatible collector for tally's tests.

Usage: collector.py [--port N] [--tls CERT KEY] [--log FILE] [--max-seconds S] [--verbose]

Prints exactly one line "PORT <n>" on stdout once it accepts connections, and
nothing else there afterwards (the C helper stops reading after that line).

Endpoints
  POST /v1/batch, /v1/import      body {"batch":[...], "sentAt":...}
  POST /v1/<type> (track, ...)    a single message, recorded as a batch of one
  POST /control                   {"script":[step,...], "default":step, "down_ms":N, "files":{...}}
  GET  <a path in files>          a file served for tally to fetch (remote rules), see below
  GET  /received[?summary=1]      records and counts (summary=1 leaves out the records)
  POST /reset                     forget records, script and default
  GET  /health                    "ok"

A step decides how one batch request is answered; every batch request takes the
next step from the script, and the default once the script is used up:
  {"status":500}                      answer with that status
  {"status":429,"retry_after":"2"}    also send Retry-After
  {"delay_ms":3000}                   wait before answering (status defaults to 200)
  {"after_answers":1}                 answer only once N other requests were answered (at most
                                      10 s; past that it answers anyway, recorded as fault
                                      "after_answers_timeout"): orders answers without sleeping
  {"reset":true,"read_bytes":N}       read N body bytes (default all), then RST
  {"close_mid_response":true}         send headers promising 100 bytes, then close
  {"body":...}                        answer with this body instead of the usual one
"files" maps a path to what a GET of it answers, replacing earlier files:
  {"/rules.bundle": {"file": "/tmp/x.bundle", "etag": "\"v3\""}}
                                      the file's bytes with that ETag, or 304 (no body) when
                                      the request's If-None-Match is that ETag
  {"/rules.bundle": {"status": 500}}  that status, no file
GETs of files are counted per answer status in /received ("file_answers").
A request counts as accepted when its status (the one in the headers, for
close_mid_response) is 2xx: close_mid_response and a delay the client gave up on
are the "stored but the acknowledgement was lost" cases, which is exactly what
makes a retrying client produce duplicates.  A malformed body turns a 2xx step
into 400; a non-2xx step wins over it, as a server failing before parsing would.
"""

import argparse
import base64
import gzip
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

DEFAULT_STEP = {"status": 200}
STEP_KEYS = {"status", "retry_after", "delay_ms", "after_answers", "reset", "read_bytes",
             "close_mid_response", "body"}
BATCH_PATHS = {"/v1/batch", "/v1/import"}
SINGLE_PATHS = {"/v1/track", "/v1/identify", "/v1/page", "/v1/screen",
                "/v1/group", "/v1/alias"}


class Stop(BaseException):
    """Raised in the main thread by the signal handler to leave serve_forever.
    Not an Exception: socketserver swallows those when the signal lands while
    a connection is being handed to its thread, and the process would live on."""


class State:
    """Everything that must survive the listener being closed and re-opened."""

    def __init__(self, log_file, verbose):
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)  # notified by add_record
        self.records = []
        self.seq = 0
        self.script = []
        self.default = dict(DEFAULT_STEP)
        self.tls_failures = 0
        self.files = {}
        self.file_answers = {}
        self.conns = set()
        self.log_file = log_file
        self.verbose = verbose
        self.going_down = False
        self.down_ms = 0
        # Set once the /control response that asked for the outage has been
        # written, so the main thread does not cut that connection before it.
        self.down_acked = threading.Event()
        self.in_progress = 0  # batch requests read and not answered yet

    def next_step(self):
        with self.lock:
            if self.script:
                return self.script.pop(0)
            return dict(self.default)

    def add_record(self, rec):
        with self.lock:
            self.seq += 1
            rec["seq"] = self.seq
            self.records.append(rec)
            self.answered.notify_all()
            if self.log_file:
                self.log_file.write(json.dumps(rec) + "\n")
                self.log_file.flush()

    def reset(self):
        with self.lock:
            self.records = []
            self.seq = 0
            self.script = []
            self.default = dict(DEFAULT_STEP)
            self.tls_failures = 0

    def summary(self, with_records):
        with self.lock:
            seen = set()
            accepted = duplicates = missing = 0
            for rec in self.records:
                if not rec["accepted"]:
                    continue
                for msg in rec["messages"]:
                    accepted += 1
                    mid = msg.get("messageId") if isinstance(msg, dict) else None
                    if not mid:
                        missing += 1
                    elif mid in seen:
                        duplicates += 1
                    else:
                        seen.add(mid)
            # Counts come first so that a substring search for a key (the C
            # helper does that) finds these before anything inside a message.
            out = {
                "accepted_messages": accepted,
                "unique_message_ids": len(seen),
                "duplicates": duplicates,
                "missing_message_id": missing,
                "total_requests": len(self.records),
                "accepted_requests": sum(1 for r in self.records if r["accepted"]),
                "script_remaining": len(self.script),
                "in_progress": self.in_progress,
                "tls_failures": self.tls_failures,
                "file_answers": dict(self.file_answers),
            }
            if with_records:
                out["requests"] = list(self.records)
            return out


STATE = None


def validate_step(step):
    if not isinstance(step, dict):
        raise ValueError("a step must be an object")
    unknown = set(step) - STEP_KEYS
    if unknown:
        # A typo in a test's script would otherwise silently mean "200".
        raise ValueError("unknown step keys: %s" % ", ".join(sorted(unknown)))
    out = dict(step)
    status = out.setdefault("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError("status must be an integer 100..599")
    if "retry_after" in out:
        ra = out["retry_after"]
        if isinstance(ra, bool) or not isinstance(ra, (str, int, float)):
            raise ValueError("retry_after must be a string or number")
        out["retry_after"] = ra if isinstance(ra, str) else str(ra)
    for key in ("delay_ms", "read_bytes", "after_answers"):
        if key in out:
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError("%s must be a non-negative number" % key)
    if "read_bytes" in out:
        out["read_bytes"] = int(out["read_bytes"])
    for key in ("reset", "close_mid_response"):
        if key in out and not isinstance(out[key], bool):
            raise ValueError("%s must be true or false" % key)
    return out


def parse_basic_auth(header):
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return user, (password if sep else None)


class Handler(BaseHTTPRequestHandler):
    # small responses must not wait for the delayed-ACK/Nagle dance (~40 ms per request)
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "tally-test-collector"

    def version_string(self):
        return self.server_version

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake runs here, in the connection's own thread, so a
            # client that stalls or rejects the certificate cannot hold up accept().
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                with STATE.lock:
                    STATE.tls_failures += 1
                raise
            self.request.settimeout(None)
        super().setup()
        with STATE.lock:
            STATE.conns.add(self.connection)

    def finish(self):
        with STATE.lock:
            STATE.conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if STATE.verbose:
            sys.stderr.write("collector: %s\n" % (fmt % args))

    # ---- plumbing -------------------------------------------------------

    def _send(self, status, body, headers=None):
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            ctype = "application/octet-stream"
        elif isinstance(body, str):
            data = body.encode("utf-8")
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(body).encode("utf-8")
            ctype = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_chunked(self, limit):
        out = bytearray()
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ValueError("connection closed inside a chunked body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            want = size if limit is None else min(size, limit - len(out))
            out += self.rfile.read(want)
            if limit is not None and len(out) >= limit:
                return bytes(out)
            self.rfile.read(2)

    def _read_body(self, limit=None):
        """Returns the body as sent (still compressed), or None when it has no
        length; with a limit, stops early and leaves the rest unread."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        n = int(length)
        if limit is not None:
            n = min(n, int(limit))
        return self.rfile.read(n)

    def _drain(self):
        # Leftover body bytes would be parsed as the next request on this
        # keep-alive connection, so read them or give up the connection.
        try:
            self._read_body()
        except (ValueError, OSError):
            self.close_connection = True

    def _abort_with_rst(self):
        # SO_LINGER 0 turns close() into a RST, which is what a crashed peer or
        # a middlebox dropping state looks like to the client.  rfile holds a
        # reference to the socket, so the descriptor only really closes when
        # it is closed too; wfile writes straight to the socket and may stay.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.rfile.close()
        self.close_connection = True

    # ---- verbs ----------------------------------------------------------

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            self._send(200, "ok")
        elif url.path == "/received":
            query = parse_qs(url.query)
            summary_only = query.get("summary", ["0"])[0] not in ("0", "", "false")
            self._send(200, STATE.summary(not summary_only))
        elif url.path in STATE.files:
            self._serve_file(STATE.files[url.path])
        else:
            self._send(404, {"error": "not found"})

    def _serve_file(self, spec):
        status = spec.get("status", 200)
        body, headers = b"", {}
        if status == 200:
            headers["ETag"] = spec.get("etag", "")
            if spec.get("etag") and self.headers.get("If-None-Match") == spec["etag"]:
                status = 304
            else:
                with open(spec["file"], "rb") as f:
                    body = f.read()
        with STATE.lock:
            STATE.file_answers[str(status)] = STATE.file_answers.get(str(status), 0) + 1
        if status == 304:
            self.send_response(304)
            self.send_header("ETag", spec["etag"])
            self.end_headers()
            return
        self._send(status, body, headers)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        path = urlsplit(self.path).path
        if path in BATCH_PATHS or path in SINGLE_PATHS:
            # counted while being answered, so a test can wait for "a batch is in flight"
            with STATE.lock:
                STATE.in_progress += 1
            try:
                self._batch(path)
            finally:
                with STATE.lock:
                    STATE.in_progress -= 1
        elif path == "/control":
            self._control()
        elif path == "/reset":
            self._drain()
            STATE.reset()
            self._send(200, {"ok": True})
        else:
            self._drain()
            self._send(404, {"error": "not found"})

    def _json_body(self):
        raw = self._read_body()
        if raw is None:
            raise ValueError("missing Content-Length")
        return json.loads(raw) if raw.strip() else {}

    def _control(self):
        try:
            req = self._json_body()
            if not isinstance(req, dict):
                raise ValueError("control body must be an object")
            unknown = set(req) - {"script", "default", "down_ms", "files"}
            if unknown:
                raise ValueError("unknown control keys: %s" % ", ".join(sorted(unknown)))
            script = req.get("script")
            if script is not None:
                if not isinstance(script, list):
                    raise ValueError("script must be a list")
                script = [validate_step(s) for s in script]
            default = validate_step(req["default"]) if "default" in req else None
            files = req.get("files")
            if files is not None and (not isinstance(files, dict) or not all(
                    isinstance(v, dict) and ("file" in v or "status" in v) for v in files.values())):
                raise ValueError("files must map paths to {\"file\":...,\"etag\":...} or {\"status\":N}")
            down_ms = req.get("down_ms")
            if down_ms is not None and (isinstance(down_ms, bool)
                                        or not isinstance(down_ms, (int, float)) or down_ms < 0):
                raise ValueError("down_ms must be a non-negative number")
        except (ValueError, json.JSONDecodeError) as e:
            self.close_connection = True
            self._send(400, {"error": str(e)})
            return
        busy = False
        with STATE.lock:
            if script is not None:
                STATE.script = script
            if default is not None:
                STATE.default = default
            if files is not None:
                STATE.files = files
            queued = len(STATE.script)
            if down_ms is not None:
                if STATE.going_down:
                    down_ms = None
                    busy = True
                else:
                    STATE.going_down = True
                    STATE.down_ms = down_ms
        if down_ms is None:
            if busy:
                self._send(409, {"error": "already going down"})
            else:
                self._send(200, {"ok": True, "queued": queued})
            return
        # Stop accepting and cut the kept-alive connections before answering:
        # once the test sees this response, nothing may get through, with no
        # window (a batch on an old connection once slipped through here).
        self.server.shutdown()
        self.server.socket.close()
        cut_connections(keep=self.connection)
        self.close_connection = True
        try:
            self._send(200, {"ok": True, "queued": queued, "down_ms": down_ms})
        finally:
            STATE.down_acked.set()

    def _batch(self, path):
        step = STATE.next_step()
        rec = {
            "seq": 0,
            "time": time.time(),
            "path": path,
            "auth_user": None,
            "auth_password": None,
            "content_type": self.headers.get("Content-Type"),
            "user_agent": self.headers.get("User-Agent"),
            "content_encoding": self.headers.get("Content-Encoding"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "raw_bytes": 0,
            "decoded_bytes": 0,
            "sent_at": None,
            "messages": [],
            "status_returned": None,
            "accepted": False,
            "fault": None,
            "error": None,
        }
        rec["auth_user"], rec["auth_password"] = parse_basic_auth(self.headers.get("Authorization"))

        if step.get("reset"):
            try:
                raw = self._read_body(step.get("read_bytes"))
            except (ValueError, OSError):
                raw = None
            rec["raw_bytes"] = len(raw or b"")
            rec["fault"] = "reset"
            STATE.add_record(rec)
            self._abort_with_rst()
            return

        try:
            raw = self._read_body()
        except (ValueError, OSError) as e:
            rec["error"] = "unreadable body: %s" % e
            rec["fault"] = "bad_request"
            rec["status_returned"] = 400
            STATE.add_record(rec)
            self.close_connection = True
            self._send(400, {"error": rec["error"]})
            return

        error = None
        if raw is None:
            error, raw = "missing Content-Length", b""
        rec["raw_bytes"] = len(raw)
        decoded = raw
        encoding = (rec["content_encoding"] or "identity").strip().lower()
        if error is None:
            try:
                if encoding == "gzip":
                    decoded = gzip.decompress(raw)
                elif encoding == "deflate":
                    decoded = zlib.decompress(raw)
                elif encoding != "identity":
                    error = "unsupported Content-Encoding %r" % encoding
            except (OSError, EOFError, zlib.error) as e:
                error = "bad %s body: %s" % (encoding, e)
        rec["decoded_bytes"] = len(decoded)
        if error is None:
            try:
                body = json.loads(decoded)
                if path in SINGLE_PATHS:
                    if not isinstance(body, dict):
                        raise ValueError("message must be an object")
                    rec["messages"] = [body]
                    rec["sent_at"] = body.get("sentAt")
                else:
                    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
                        raise ValueError('body must be {"batch":[...]}')
                    rec["messages"] = body["batch"]
                    rec["sent_at"] = body.get("sentAt")
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                error = "malformed JSON: %s" % e
                rec["messages"] = []

        if step.get("delay_ms"):
            rec["fault"] = "delay"
            time.sleep(step["delay_ms"] / 1000.0)
        if step.get("after_answers"):
            want = int(step["after_answers"])
            with STATE.lock:
                if not STATE.answered.wait_for(lambda: len(STATE.records) >= want, timeout=10):
                    rec["fault"] = "after_answers_timeout"

        status = step["status"]
        if error is not None and 200 <= status < 300:
            status = 400
        rec["error"] = error
        rec["status_returned"] = status
        rec["accepted"] = 200 <= status < 300
        if "body" in step:
            reply = step["body"]
        elif error is not None and status == 400:
            reply = {"error": error}
        elif rec["accepted"]:
            reply = {"success": True}
        else:
            reply = {"error": "injected status %d" % status}

        if step.get("close_mid_response"):
            rec["fault"] = "close_mid_response"
            STATE.add_record(rec)
            # A clean FIN after a short body: the client must notice the
            # missing bytes itself rather than being told by a reset.
            head = ("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: 100\r\n\r\n{\"succ" % (status, self.responses.get(status, ("",))[0]))
            self.wfile.write(head.encode("ascii"))
            self.close_connection = True
            return

        # Recorded before the response goes out, so a client that has seen
        # its acknowledgement always finds the batch in /received.
        STATE.add_record(rec)
        headers = {}
        if "retry_after" in step:
            headers["Retry-After"] = step["retry_after"]
        if error is not None:
            self.close_connection = True
        try:
            self._send(status, reply, headers)
        except OSError:
            # The client gave up (timeout) before the delayed answer: the batch
            # stays recorded, like a server that stored it and lost the ack.
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls_context = None

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        # Resets, timeouts and failed handshakes are the point of this server;
        # a traceback for each would bury real test output.
        exc = sys.exc_info()[1]
        if STATE.verbose or not isinstance(exc, (OSError, ssl.SSLError)):
            super().handle_error(request, client_address)


def bind(port, tls_context, patience_s):
    deadline = time.monotonic() + patience_s
    while True:
        try:
            srv = Server(("127.0.0.1", port), Handler)
            srv.tls_context = tls_context
            return srv
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def cut_connections(keep=None):
    with STATE.lock:
        conns = [c for c in STATE.conns if c is not keep]
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def watchdog(parent, max_seconds):
    """Ends the process if the test that started it has gone (reparenting
    changes getppid) or it has run too long, so nothing outlives a crashed test."""
    deadline = time.monotonic() + max_seconds
    while True:
        time.sleep(1)
        if os.getppid() != parent or time.monotonic() >= deadline:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main():
    global STATE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--log", metavar="FILE")
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    def on_signal(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log_file = open(args.log, "a", encoding="utf-8") if args.log else None
    STATE = State(log_file, args.verbose)

    tls_context = None
    if args.tls:
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_context.load_cert_chain(args.tls[0], args.tls[1])

    # Taken before "PORT" is printed: a parent that exits right after reading
    # that line must already be the one the watchdog compares against.
    parent = os.getppid()
    threading.Thread(target=watchdog, args=(parent, args.max_seconds), daemon=True).start()

    srv = None
    try:
        srv = bind(args.port, tls_context, 0)
        port = srv.server_address[1]
        sys.stdout.write("PORT %d\n" % port)
        sys.stdout.flush()
        while True:
            try:
                srv.serve_forever(poll_interval=0.05)
            finally:
                srv.server_close()
            srv = None
            # serve_forever only returns normally when /control asked for an outage.
            STATE.down_acked.wait(5)
            cut_connections()
            time.sleep(STATE.down_ms / 1000.0)
            srv = bind(port, tls_context, 5)
            with STATE.lock:
                STATE.going_down = False
                STATE.down_acked.clear()
    except Stop:
        pass
    finally:
        if srv is not None:
            srv.server_close()
        cut_connections()
        if log_file:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
