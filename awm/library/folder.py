"""A library of model fingerprints on disk: each model digested once, compared many times.

The folder holds one entry per model (awm.library.entry), the suspects' digests and the
scored pairs (both hidden), and a marker file that makes it a library.
"""
import fcntl
import hashlib
import json
import os
import re

from awm.atomic import write_json_atomic
from awm.errors import CheckpointError, SourceUnavailable
from awm.library.entry import (
    DIGEST_FILE,
    ENTRY_FORMAT,
    EXACT,
    FINGERPRINT_FILE,
    KERNEL_FILE,
    VOCAB_FILE,
    StoredDigest,
    build_entry,
    is_current,
    read_record,
)
from awm.library.remote import Mirror, file_facts, mirror, parse_library_reference
from awm.version import VERSION

MARKER, MANIFEST = "awm-library.json", "manifest.json"
SUSPECTS, PAIRS = ".suspects", ".pairs"       # the suspects' digests and scored pairs, beside the entries
ENTRY_FILES = (DIGEST_FILE, FINGERPRINT_FILE, VOCAB_FILE, KERNEL_FILE)


def _marker(path):
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(path, f"unreadable library marker ({err.__class__.__name__})") from None
    return found if isinstance(found, dict) else {}


# ----------------------------------------------------------------------------- identity
def source_identity(reference):
    """What the entry was built from, and what would show that it changed: a Hub repo's
    commit, or a local model's files with their sizes and modification times."""
    from awm.readers import hub

    remote = hub.parse_reference(reference)
    if remote:
        snapshot = hub.HubSnapshot(remote)
        return {"hub_repo": remote.repo, "file": remote.filename, "commit": snapshot.commit}
    path = os.path.abspath(os.path.expanduser(str(reference)))
    if not os.path.exists(path):
        raise CheckpointError(path, "does not exist")
    listed = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in sorted(os.listdir(path)) if not n.startswith(".")]
    stats = {os.path.basename(p): os.stat(p) for p in listed if os.path.isfile(p)}
    return {"path": path, "files": {n: [s.st_size, s.st_mtime_ns] for n, s in stats.items()}}


def source_reference(identity):
    """The reference that reads an entry's model again: its local path, or its Hub repo pinned
    to the commit it was built from."""
    if identity.get("hub_repo"):
        return f"hf://{identity['hub_repo']}@{identity['commit']}" + (f"/{identity['file']}" if identity.get("file") else "")
    return identity["path"]


def source_unchanged(identity):
    """None when the source still holds what the entry was built from, else why not."""
    if identity.get("hub_repo"):
        return None                                  # a pinned commit never changes
    try:
        now = source_identity(identity["path"])
    except CheckpointError as err:
        return f"its source is gone ({err.problem})"
    return None if now == identity else "its source changed since it was added (re-add it)"


def same_source(a, b):
    return (a.get("hub_repo"), a.get("file"), a.get("path")) == (b.get("hub_repo"), b.get("file"), b.get("path"))


def default_name(reference):
    from awm.readers import hub

    remote = hub.parse_reference(reference)
    if remote:
        name = remote.repo.replace("/", "--") + (f"--{os.path.basename(remote.filename)}" if remote.filename else "")
    else:
        name = os.path.basename(os.path.normpath(str(reference)))
    return re.sub(r"[^\w.+-]+", "_", name).lstrip(".") or "model"


# ----------------------------------------------------------------------------- the library
def library_folder(reference, create=False):
    """The local folder of a library: `reference` itself, or for a library published as a Hub
    dataset repo, its local mirror (fetched manifest first; entries follow on demand)."""
    remote = parse_library_reference(reference)
    if remote is None:
        return os.path.abspath(os.path.expanduser(str(reference)))
    if create:
        raise CheckpointError(str(reference), "a published library is read-only: add to a local folder, then upload it")
    return mirror(remote, MARKER, MANIFEST)


class Library:
    """A folder of entries (plus the suspects' digests and the scored pairs, hidden). The
    folder may mirror a published library: its entries then come from the repo's manifest and
    their files are fetched, checked, the first time they are read."""

    def __init__(self, directory, create=False):
        self.directory = os.path.abspath(os.path.expanduser(str(directory)))
        marker = os.path.join(self.directory, MARKER)
        if not os.path.isfile(marker):
            if not create:
                raise CheckpointError(self.directory, "not an awm library (no awm-library.json); build one with --library DIR --add MODEL")
            if os.path.isdir(self.directory) and [n for n in os.listdir(self.directory) if not n.startswith(".")]:
                raise CheckpointError(self.directory, "is not empty and not an awm library: choose a new or empty folder")
            os.makedirs(self.directory, exist_ok=True)
            write_json_atomic(marker, {"tool": "awm", "library_format": ENTRY_FORMAT})
        facts = _marker(marker).get("mirror_of")
        self.mirror = Mirror(self.directory, facts) if facts else None
        if self.mirror and create:
            raise CheckpointError(self.directory, "mirrors a published library, which is read-only: add to a local folder")

    def entries(self):
        if self.mirror:
            return self.mirror.entries()
        return sorted(n for n in os.listdir(self.directory)
                      if not n.startswith(".") and os.path.isdir(os.path.join(self.directory, n)))

    def entry_path(self, name, suspect=False):
        """The entry's folder; from a published library, with its record and fingerprint fetched."""
        if suspect:
            return os.path.join(self.directory, SUSPECTS, name)
        if self.mirror:
            self.mirror.ensure(name, (DIGEST_FILE, FINGERPRINT_FILE))
        return os.path.join(self.directory, name)

    def add(self, reference, options, device, name=None, suspect=False, progress=False, exact=False):
        """Digest one model into the library unless an up-to-date entry exists: (name, status).
        exact: keep the kernels too (a suspect always does: the exact stage reads them)."""
        from awm.readers import open_model

        exact = exact or suspect
        name = name or default_name(reference)
        identity = source_identity(reference)
        target = self.entry_path(name, suspect)
        if os.path.isdir(target):
            try:
                record = read_record(target)
            except CheckpointError:
                record = None                    # a damaged entry is rebuilt
            if record and not suspect and not same_source(record["source"], identity):
                raise CheckpointError(str(reference), f"the library already has an entry '{name}' for another model "
                                                      f"({record['source'].get('path') or record['source'].get('hub_repo')})")
            if record and record["source"] == identity and record["options"] == options and is_current(record) \
                    and (record["kind"] == EXACT or not exact):
                return name, "up to date"
        checkpoint = open_model(reference, options["vocab_match"], progress)
        built = build_entry(os.path.dirname(target), name, checkpoint, identity, options, device, progress, exact)
        if not suspect:
            self.record_in_manifest(name, built)
        return name, "added"

    # ------------------------------------------------------------------ the manifest
    def manifest_path(self):
        return os.path.join(self.directory, MANIFEST)

    def record_in_manifest(self, name, entry):
        """Add or replace one entry in manifest.json (read, changed and renamed under a lock, so
        builders running at once keep each other's lines)."""
        record = read_record(entry)
        files = {f: file_facts(os.path.join(entry, f)) for f in sorted(os.listdir(entry)) if f in ENTRY_FILES}
        line = {"kind": record["kind"], "build_id": record["build_id"], "version": record["version"],
                "entry_format": record["entry_format"], "source": record["source"], "options": record["options"],
                "architecture": record["meta"].get("architecture"), "hidden_size": record["hidden_size"],
                "num_layers": record["num_layers"], "files": files, "bytes": sum(f["size"] for f in files.values())}
        with open(os.path.join(self.directory, ".manifest.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = self.manifest() or {"tool": "awm", "library_format": ENTRY_FORMAT, "entries": {}}
            manifest.update(version=VERSION, library_format=ENTRY_FORMAT)
            manifest["entries"][name] = line
            manifest["bytes"] = sum(e["bytes"] for e in manifest["entries"].values())
            write_json_atomic(self.manifest_path(), manifest)

    def manifest(self):
        try:
            with open(self.manifest_path(), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def open(self, name, device, suspect=False, record=None):
        """A digest to score against: an exact entry's stored kernels (when this awm version
        built them), else the model read again from the entry's source (SourceUnavailable when
        that source is gone or changed)."""
        entry = self.entry_path(name, suspect)
        record = record if record is not None else read_record(entry)
        if record["kind"] == EXACT and is_current(record):
            if self.mirror and not suspect:
                self.mirror.ensure(name, (VOCAB_FILE, KERNEL_FILE))
            return StoredDigest(entry, device, record)
        stored = "" if record["kind"] != EXACT else f" (its kernels are from awm {record['version']})"
        why = source_unchanged(record["source"])
        if why is not None:
            raise SourceUnavailable(entry, f"the exact stage cannot run{stored}: {why}")
        from awm.comparison.digest import ModelDigest
        from awm.readers import open_model

        options = record["options"]
        try:
            checkpoint = open_model(source_reference(record["source"]), options["vocab_match"])
        except CheckpointError as err:
            raise SourceUnavailable(entry, f"the exact stage cannot run{stored}: its source cannot be read ({err})") from None
        shared = None
        if record.get("build_id") and getattr(device, "type", str(device)) == "cpu":     # host memory only
            key = (os.path.abspath(entry), record["build_id"], options["precision"], options["with_circuit"])
            shared = _layer_store().shared(key, ModelDigest.layer_bytes(checkpoint, options["with_circuit"]))
        return ModelDigest(checkpoint, device, with_circuit=options["with_circuit"], precision=options["precision"],
                           shared_layers=shared)

    def pair_cache(self):
        return PairCache(os.path.join(self.directory, PAIRS))


def _layer_store():
    """The process's store of compact entries' layer kernels (awm.comparison.digest.LayerStore): at most
    LAYER_STORE_SHARE of the machine's memory and LAYER_STORE_BYTES."""
    global _LAYER_STORE
    if _LAYER_STORE is None:
        from awm.comparison.digest import LayerStore

        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        _LAYER_STORE = LayerStore(min(LAYER_STORE_BYTES, int(LAYER_STORE_SHARE * memory)))
    return _LAYER_STORE


LAYER_STORE_BYTES = 4 << 30          # 30 models of SmolLM2's size (120 MB each); no 7B model (6 GB)
LAYER_STORE_SHARE = 1 / 6
_LAYER_STORE = None


# ----------------------------------------------------------------------------- scored pairs
class PairCache:
    """Pair records on disk, keyed by what decides them: a rerun after an interruption reads
    the pairs already scored instead of recomputing them."""

    def __init__(self, folder):
        self.folder = folder

    @staticmethod
    def key(*parts):
        return hashlib.sha256(json.dumps([VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, key):
        try:
            with open(os.path.join(self.folder, key + ".json"), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def put(self, key, record):
        write_json_atomic(os.path.join(self.folder, key + ".json"), record)
