"""Models straight from the Hugging Face Hub, fetching only the bytes the score reads.

A repo is resolved to a commit, and a sparse local copy of its files is built under the
cache: config.json and the tokenizer whole, each weight file's header, then the byte ranges
of the tensors the score needs (embedding, W_q / W_k, norm gains). Everything else in the
repo (MLP weights, V / O projections, the LM head) is never transferred. The local readers
then parse these copies like any checkpoint, with every check they apply to local files.
"""
import json
import os
import re
import threading
import time
from dataclasses import dataclass

from tqdm import tqdm

from awm.atomic import write_text_atomic
from awm.errors import CheckpointError
from awm.readers import checkpoint_files as files
from awm.readers import range_cache, vocabulary
from awm.readers.weight_files import choose_weight_files, gguf_parts

HUB_CACHE_ENV = "AWM_HUB_CACHE"
REPO_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
HUB_REFERENCE = re.compile(rf"^(?P<repo>{REPO_ID})(?:@(?P<revision>[^/@\s]+))?(?:/(?P<file>[^@\s]+))?$")
HUB_PREFIX = "hf://"
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# First guesses at a weight file's header size: a safetensors header is a few KB to tens of
# KB; a GGUF header carries the whole tokenizer (MBs). Too short a guess costs one more request.
HEADER_PREFIX_BYTES = {".safetensors": 64 * 1024, ".gguf": 1024 * 1024}
MAX_TRANSFER_ATTEMPTS = 5                    # per byte range, resuming where the last one stopped
RETRY_WAIT_S = 1.0
RETRY_STATUS = (429, 500, 502, 503, 504)     # busy or failing servers: worth another try


RESOLVED = {}                                # (endpoint, cache folder, revision) -> (commit, sizes)


@dataclass(frozen=True)
class HubReference:
    repo: str
    revision: str = None
    filename: str = None       # one GGUF file in a repo that holds several
    repo_type: str = "model"   # or "dataset": a published fingerprint library

    @property
    def where(self):
        return HUB_PREFIX + ("datasets/" if self.repo_type == "dataset" else "") + self.repo

    def __str__(self):
        return self.where + (f"@{self.revision}" if self.revision else "") + (f"/{self.filename}" if self.filename else "")


def parse_reference(text, base_dir=None):
    """A HubReference for `hf://owner/name[@revision][/file.gguf]` or a bare `owner/name[@revision]`
    that is not an existing local path (a local folder of that name wins); else None."""
    text = str(text)
    explicit = text.startswith(HUB_PREFIX)
    if not explicit and os.path.exists(os.path.join(base_dir or "", os.path.expanduser(text))):
        return None
    match = HUB_REFERENCE.match(text[len(HUB_PREFIX):] if explicit else text)
    if not match or (match["file"] and not explicit):
        if explicit:
            raise CheckpointError(text, "not a Hub reference: expected hf://owner/name[@revision][/file.gguf]")
        return None
    return HubReference(match["repo"], match["revision"], match["file"])


def cache_root():
    """$AWM_HUB_CACHE, else an `awm` folder in the Hugging Face cache home ($HF_HOME)."""
    from huggingface_hub import constants

    return os.path.abspath(os.path.expanduser(os.environ.get(HUB_CACHE_ENV) or os.path.join(constants.HF_HOME, "awm")))


def _safe_repo_path(name, repo):
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(HUB_PREFIX + repo, f"the Hub listing names an unsafe file path {name!r}")
    return name


# ----------------------------------------------------------------------------- errors
def _hub_error(err, where, what="", repo=None):
    """Turn the Hub client's exceptions into one line that says what to do."""
    import httpx2
    from huggingface_hub import errors as hub_errors

    repo = repo or where
    if isinstance(err, hub_errors.GatedRepoError):
        problem = f"gated repo: accept its conditions on the Hub page, then log in (`hf auth login` or HF_TOKEN){what}"
    elif isinstance(err, hub_errors.RevisionNotFoundError):
        problem = f"revision not found{what}"
    elif isinstance(err, hub_errors.RemoteEntryNotFoundError):
        problem = f"file not found in the repo{what}"
    elif isinstance(err, hub_errors.RepositoryNotFoundError):
        problem = f"repo not found (or private: log in with `hf auth login` or set HF_TOKEN){what}"
    elif isinstance(err, hub_errors.HfHubHTTPError):
        status = err.response.status_code if getattr(err, "response", None) is not None else "?"
        problem = f"the Hub answered HTTP {status}{what}"
    elif isinstance(err, (httpx2.TransportError, hub_errors.OfflineModeIsEnabled)):
        problem = f"cannot reach the Hub ({err.__class__.__name__}){what}; check the network, HF_ENDPOINT, or run with HF_HUB_OFFLINE=1 on a cached model"
    else:
        return err
    return CheckpointError(where, problem)


# ----------------------------------------------------------------------------- one snapshot
class HubSnapshot:
    """One repo at one commit: its file listing and the sparse local copies of what was read."""

    def __init__(self, reference):
        self.reference = reference
        self.repo, self.repo_type = reference.repo, reference.repo_type
        self.where = reference.where
        self.repo_dir = os.path.join(cache_root(), f"{self.repo_type}s--" + self.repo.replace("/", "--"))
        self.commit, self.sizes = self._resolve()
        self.directory = os.path.join(self.repo_dir, "snapshots", self.commit)
        os.makedirs(self.directory, exist_ok=True)
        self.fetcher = range_cache.RangeFetcher(self._transfer)
        self._sparse = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ commit and listing
    def _ref_path(self, revision):
        return os.path.join(self.repo_dir, "refs", revision.replace("/", "%2F"))

    def _listing_path(self, commit):
        return os.path.join(self.repo_dir, "listings", commit + ".json")

    def _resolve(self):
        """(commit sha, {file: size}), resolved once per process: every model of a run sees one
        commit per revision, even if a branch moves meanwhile."""
        from huggingface_hub import constants

        key = (constants.ENDPOINT, self.repo_dir, self.reference.revision)
        if key not in RESOLVED:
            RESOLVED[key] = self._resolve_now()
        return RESOLVED[key]

    def _resolve_now(self):
        """(commit sha, {file: size}) from the Hub; from the cache when offline or unreachable."""
        import httpx2
        from huggingface_hub import HfApi, constants
        from huggingface_hub import errors as hub_errors

        revision = self.reference.revision or "main"
        cached = self._cached_listing(revision)
        if cached and COMMIT_SHA.match(revision):
            return cached                      # a pinned commit never changes: no network needed
        try:
            api = HfApi(endpoint=constants.ENDPOINT)
            describe = api.dataset_info if self.repo_type == "dataset" else api.model_info
            info = describe(self.repo, revision=self.reference.revision, files_metadata=True)
        except (httpx2.TransportError, hub_errors.OfflineModeIsEnabled) as err:
            if cached:
                return cached
            raise _hub_error(err, self.where, f" (revision {revision})") from None
        except hub_errors.HfHubHTTPError as err:
            raise _hub_error(err, self.where, f" (revision {revision})" if self.reference.revision else "") from None
        if not info.sha or not COMMIT_SHA.match(info.sha):
            raise CheckpointError(self.where, "the Hub did not name the commit of this revision")
        sizes = {s.rfilename: s.size for s in info.siblings or [] if s.rfilename}
        self._store_listing(revision, info.sha, sizes)
        return info.sha, sizes

    def _cached_listing(self, revision):
        try:
            with open(self._ref_path(revision), encoding="utf-8") as handle:
                commit = handle.read().strip()
            with open(self._listing_path(commit), encoding="utf-8") as handle:
                sizes = json.load(handle)
            if COMMIT_SHA.match(commit) and isinstance(sizes, dict):
                return commit, sizes
        except (OSError, ValueError):
            pass
        return None

    def _store_listing(self, revision, commit, sizes):
        for path, text in ((self._listing_path(commit), json.dumps(sizes)), (self._ref_path(revision), commit), (self._ref_path(commit), commit)):
            write_text_atomic(path, text)

    @property
    def repo_bytes(self):
        return sum(size for size in self.sizes.values() if isinstance(size, int))

    # ------------------------------------------------------------------ which files
    def weight_files(self):
        """(weight file names, small files to fetch whole), chosen as for a local folder."""
        names = [_safe_repo_path(n, self.repo) for n in self.sizes]
        top = [n for n in names if "/" not in n]
        chosen = self.reference.filename
        if chosen:
            if chosen not in self.sizes:
                raise CheckpointError(f"{self.where}/{chosen}", f"no such file at commit {self.commit[:12]}")
            if not chosen.endswith(".gguf"):
                raise CheckpointError(f"{self.where}/{chosen}", "name a .gguf file (a safetensors repo is read whole: hf://owner/name)")
            return gguf_parts(chosen, names), []
        # Pickles cannot be read safely by byte ranges: .bin weights are passed over.
        choice = choose_weight_files([n for n in top if not n.endswith(".bin")])
        if choice is None and choose_weight_files(top):
            raise CheckpointError(self.where, "holds only PyTorch .bin weights: pickles cannot be read safely by byte ranges; "
                                              f"download the repo (hf download {self.repo}) and pass its folder")
        if choice is None:
            raise CheckpointError(self.where, "no weights found (expected *.safetensors or *.gguf files)")
        if choice.ambiguous_gguf:
            shown = ", ".join(choice.files[:4]) + (" ..." if len(choice.files) > 4 else "")
            raise CheckpointError(self.where, f"holds {len(choice.files)} GGUF files ({shown}); name one: {self.where}/{choice.files[0]}")
        if choice.format == "gguf":
            return list(choice.files), []
        # AutoGPTQ keeps its settings beside the config: a quantized repo cannot be read without them.
        # The model card's front matter declares its base (a claim the family tree can use).
        small = ["config.json"] + [f for f in ("quantize_config.json", "README.md") if f in top]
        small += next(([f] for f, _ in vocabulary.VOCAB_FILES if f in top), [])
        return (self._indexed_shards(choice.index) if choice.index else list(choice.files)), small

    def _indexed_shards(self, index_name):
        index = self.ensure_whole(index_name)
        with open(index, encoding="utf-8") as handle:
            try:
                weight_map = json.load(handle).get("weight_map")
            except (ValueError, AttributeError):
                weight_map = None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{self.where}/{index_name}", "shard index has no weight_map")
        shards = list(dict.fromkeys(weight_map.values()))
        for shard in shards:
            if not isinstance(shard, str) or "/" in shard or shard not in self.sizes:
                raise CheckpointError(f"{self.where}/{index_name}", f"names a shard {shard!r} the repo does not hold")
        return shards

    # ------------------------------------------------------------------ bytes
    def local_path(self, name):
        return os.path.join(self.directory, *name.split("/"))

    def sparse(self, name):
        with self._lock:
            if name not in self._sparse:
                size = self.sizes.get(name)
                if not isinstance(size, int) or size < 0:
                    raise CheckpointError(f"{self.where}/{name}", "the Hub listing gives no size for this file")
                os.makedirs(os.path.dirname(self.local_path(name)), exist_ok=True)
                self._sparse[name] = range_cache.SparseFile(self.local_path(name), size)
            return self._sparse[name]

    def ensure(self, name, ranges, progress=None):
        self.fetcher.fill([(name, self.sparse(name), ranges)], progress)

    def ensure_whole(self, name):
        self.ensure(name, [(0, self.sizes.get(name) or 0)])
        return self.local_path(name)

    def ensure_header(self, name):
        """Fetch a weight file's header (safetensors JSON, GGUF metadata and tensor table); its length."""
        size = self.sizes[name]
        prefix_bytes = min(size, HEADER_PREFIX_BYTES[os.path.splitext(name)[1]])
        while True:
            self.ensure(name, [(0, prefix_bytes)])
            with open(self.local_path(name), "rb") as handle:
                prefix = handle.read(prefix_bytes)
            needed = self._header_length(name, prefix)
            if needed <= prefix_bytes:
                return needed
            if needed > size:
                raise CheckpointError(f"{self.where}/{name}", f"header claims {needed} bytes, more than the {size}-byte file: truncated or not a weight file")
            prefix_bytes = min(size, max(needed, 4 * prefix_bytes))

    def _header_length(self, name, prefix):
        if name.endswith(".gguf"):
            try:
                return files.gguf_header_length(prefix)
            except files.NeedMoreBytes as more:
                return more.needed
            except (ValueError, OverflowError) as err:
                raise CheckpointError(f"{self.where}/{name}", f"malformed GGUF header ({err})") from None
        if len(prefix) < 8:
            raise CheckpointError(f"{self.where}/{name}", "not a safetensors file (shorter than its 8-byte header length)")
        length = files.safetensors_header_length(prefix)
        if length - 8 > files.MAX_SAFETENSORS_HEADER:
            raise CheckpointError(f"{self.where}/{name}", f"safetensors header of {length - 8} bytes is larger than the {files.MAX_SAFETENSORS_HEADER} allowed")
        return length

    def fetch_local(self, path, start, stop):
        """The stores' hook: make bytes [start, stop) of a local copy real before a read."""
        name = os.path.relpath(path, self.directory).replace(os.sep, "/")
        self.ensure(name, [(start, stop)])

    def _transfer(self, name, start, stop, write):
        """Stream bytes [start, stop) of one repo file; a dropped or short transfer resumes
        from the last byte written, up to MAX_TRANSFER_ATTEMPTS times."""
        import httpx2
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub import errors as hub_errors
        from huggingface_hub.utils import (
            build_hf_headers,
            get_session,
            hf_raise_for_status,
        )

        url = hf_hub_url(self.repo, name, repo_type=self.repo_type, revision=self.commit, endpoint=constants.ENDPOINT)
        where = f"{self.where}/{name}"
        position, failure = start, None
        for attempt in range(MAX_TRANSFER_ATTEMPTS):
            if attempt:
                time.sleep(RETRY_WAIT_S * attempt)
            headers = {**build_hf_headers(), "Range": f"bytes={position}-{stop - 1}"}
            try:
                with get_session().stream("GET", url, headers=headers) as response:
                    if response.status_code in RETRY_STATUS:
                        failure = f"HTTP {response.status_code}"
                        continue
                    hf_raise_for_status(response)
                    self._check_range(response, position, where)
                    for data in response.iter_bytes():
                        data = data[:stop - position]
                        write(position, data)
                        position += len(data)
                        if position >= stop:
                            break
            except hub_errors.OfflineModeIsEnabled:
                raise CheckpointError(where, "HF_HUB_OFFLINE is set and these bytes are not in the cache yet; unset it to fetch them") from None
            except httpx2.TransportError as err:
                failure = f"connection lost ({err.__class__.__name__})"
            except hub_errors.HfHubHTTPError as err:
                raise _hub_error(err, where, f" at commit {self.commit[:12]}") from None
            if position >= stop:
                return
            failure = failure or "the server sent fewer bytes than asked"
        raise CheckpointError(where, f"transfer failed after {MAX_TRANSFER_ATTEMPTS} attempts: {failure} "
                                     f"at byte {position} of [{start}, {stop}); nothing partial was kept, rerun to resume")

    @staticmethod
    def _check_range(response, position, where):
        if response.status_code == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if match and int(match.group(1)) == position:
                return
            raise CheckpointError(where, f"the server answered another byte range ({content_range!r}) than asked (from {position})")
        if response.status_code == 200 and position == 0:
            return                             # whole-file answer to a range from 0: take the prefix
        raise CheckpointError(where, f"the server ignored the byte range request (HTTP {response.status_code})")

    # ------------------------------------------------------------------ for the report
    def download(self, name, target):
        """Stream a whole repo file to `target` (written beside it, renamed when complete)."""
        partial = f"{target}.part-{os.getpid()}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            with open(partial, "wb") as handle:
                def write(position, data):
                    handle.seek(position)
                    handle.write(data)
                size = self.sizes.get(name)
                if not isinstance(size, int) or size < 0:
                    raise CheckpointError(f"{self.where}/{name}", "the Hub listing gives no size for this file")
                if size:
                    self._transfer(name, 0, size, write)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return target

    def source(self, needed_bytes):
        return {"hub_repo": self.repo, "revision": self.reference.revision or "main", "commit": self.commit,
                "fetched_bytes": self.fetcher.fetched_bytes, "needed_bytes": needed_bytes, "repo_bytes": self.repo_bytes}


# ----------------------------------------------------------------------------- opening a model
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_folder(snapshot):
    """The local folder of a Hub LoRA adapter repo (its config and safetensors fetched whole:
    they are small), or None when the repo holds a model. A pickled adapter is refused."""
    if snapshot.reference.filename or "config.json" in snapshot.sizes or ADAPTER_FILES[0] not in snapshot.sizes:
        return None
    if ADAPTER_FILES[1] not in snapshot.sizes:
        raise CheckpointError(snapshot.where, "adapter repo without adapter_model.safetensors: a pickled adapter cannot be "
                                              "read safely from the Hub; download it and pass its folder")
    for name in ADAPTER_FILES:
        snapshot.ensure_whole(name)
    return snapshot.directory


def open_hub_model(reference, vocab_match="bytes", progress=False, snapshot=None):
    """A ModelCheckpoint over the sparse copy of a Hub repo, with the score's tensors fetched."""
    from awm.readers.model_reader import ModelCheckpoint

    snapshot = snapshot or HubSnapshot(reference)
    weights, small = snapshot.weight_files()
    for name in small:
        if name in snapshot.sizes:
            snapshot.ensure_whole(name)
    header_bytes = sum(snapshot.ensure_header(name) for name in weights)
    local_names = {snapshot.local_path(n): n for n in weights}
    local = snapshot.directory if not weights[0].endswith(".gguf") else snapshot.local_path(weights[0])
    checkpoint = ModelCheckpoint(local, vocab_match, fetch=snapshot.fetch_local, weight_files=list(local_names))
    needed = {}
    for tensor in checkpoint.tensors_for_score():
        for info in checkpoint.stored_parts(tensor):
            needed.setdefault(local_names[info.path], []).append((info.begin, info.end))
    with tqdm(desc=f"fetching {reference.repo}", unit="B", unit_scale=True, unit_divisor=1024, total=0, leave=False,
              disable=None if progress else True) as bar:
        snapshot.fetcher.fill([(name, snapshot.sparse(name), ranges) for name, ranges in needed.items()], bar)
    needed_bytes = header_bytes + sum(snapshot.sizes[n] for n in small if n in snapshot.sizes)
    needed_bytes += sum(stop - start for ranges in needed.values() for start, stop in range_cache.merge(ranges))
    checkpoint.source = snapshot.source(needed_bytes)
    checkpoint.display_path = f"{HUB_PREFIX}{reference.repo}@{snapshot.commit}"
    return checkpoint
