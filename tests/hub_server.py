"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the endpoints huggingface_hub calls.

Serves repositories built from local folders: `GET /api/models/{repo}[/revision/{rev}]`
(id, commit sha, siblings with sizes) and `GET /{repo}/resolve/{rev}/{file}` with `Range`
(dataset repos: the same under /api/datasets/ and /datasets/)
(206 answers with Content-Range, X-Repo-Commit, ETag). Errors carry the X-Error-Code headers
the client maps to its exceptions. It counts the bytes it sends per file, and can be told to
misbehave: drop the connection mid-transfer, or send fewer bytes than asked.
"""
import hashlib
import json
import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

RESOLVE = re.compile(r"^/(?P<kind>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
API = re.compile(r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<revision>[^/]+))?$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class FakeRepo:
    def __init__(self, folder, gated_token=None):
        self.commits, self.refs = {}, {}
        self.gated_token = gated_token
        self.add_commit(folder, "main")

    def add_commit(self, folder, branch):
        files = {os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/"): os.path.join(root, n)
                 for root, _, names in os.walk(folder) for n in names}
        sha = hashlib.sha1(json.dumps([folder, branch, len(self.commits)]).encode()).hexdigest()
        self.commits[sha] = files
        self.refs[branch] = sha
        return sha

    def commit(self, revision):
        return revision if revision in self.commits else self.refs.get(revision)


class FakeHub:
    def __init__(self):
        self.repos = {}
        self.sent = Counter()            # (repo, file) -> body bytes sent
        self.requests = Counter()        # "api" / "resolve"
        self.faults = []                 # dicts: {"kind": "drop" | "short", "times": n, "files": suffix}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo, folder, gated_token=None, repo_type="model"):
        """Serve `folder` as a repo (a dataset repo: repo_type="dataset")."""
        key = repo if repo_type == "model" else f"datasets/{repo}"
        self.repos[key] = FakeRepo(folder, gated_token)
        return self.repos[key]

    def weight_bytes_sent(self, repo=None):
        return sum(n for (r, f), n in self.sent.items() if (repo is None or r == repo) and f.endswith((".safetensors", ".gguf")))

    def take_fault(self, file):
        with self._lock:
            for fault in self.faults:
                if fault["times"] > 0 and file.endswith(fault.get("files", "")):
                    fault["times"] -= 1
                    return fault["kind"]
        return None

    def _handler(hub):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _error(self, status, code, message=""):
                body = json.dumps({"error": message or code}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message or code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, name):
                repo = hub.repos.get(name)
                if repo is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                    return None
                if repo.gated_token and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
                    self._error(403 if self.headers.get("Authorization") else 401, "GatedRepo", "Access to model is restricted")
                    return None
                return repo

            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                api, resolve = API.match(path), RESOLVE.match(path)
                if api:
                    hub.requests["api"] += 1
                    prefix = "datasets/" if api["kind"] == "datasets" else ""
                    return self._model_info(prefix + api["repo"], api["revision"] or "main")
                if resolve:
                    hub.requests["resolve"] += 1
                    return self._resolve((resolve["kind"] or "") + resolve["repo"], resolve["revision"], resolve["file"])
                self._error(404, "NotFound")

            def _commit(self, name, revision):
                """(repo, commit sha), or None once the error is answered."""
                repo = self._repo(name)
                if repo is None:
                    return None
                sha = repo.commit(revision)
                if sha is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return None
                return repo, sha

            def _model_info(self, name, revision):
                found = self._commit(name, revision)
                if found is None:
                    return
                repo, sha = found
                siblings = [{"rfilename": f, "size": os.path.getsize(p)} for f, p in sorted(repo.commits[sha].items())]
                body = json.dumps({"id": name.removeprefix("datasets/"), "modelId": name.removeprefix("datasets/"), "sha": sha, "siblings": siblings, "private": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _resolve(self, name, revision, file):
                found = self._commit(name, revision)
                if found is None:
                    return
                repo, sha = found
                local = repo.commits[sha].get(file)
                if local is None:
                    return self._error(404, "EntryNotFound", f"{file} does not exist")
                size = os.path.getsize(local)
                start, stop, status = 0, size, 200
                match = RANGE.match(self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    stop = min(size, int(match.group(2)) + 1 if match.group(2) else size)
                    status = 206
                fault = hub.take_fault(file)
                sent_stop = start + (stop - start) // 2 if fault == "short" else stop
                self.send_response(status)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{sha}-{file}"')
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{sent_stop - 1}/{size}")
                self.send_header("Content-Length", str(stop - start if fault == "drop" else sent_stop - start))
                self.end_headers()
                with open(local, "rb") as handle:
                    handle.seek(start)
                    body = handle.read(sent_stop - start)
                if fault == "drop":       # half the body, then the connection dies
                    body = body[:len(body) // 2]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                else:
                    self.wfile.write(body)
                with hub._lock:
                    hub.sent[(name, file)] += len(body)

        return Handler
