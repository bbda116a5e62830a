"""A library of model fingerprints on disk: each model digested once, compared many times.

The folder holds one entry per model (awm.library_entry), the suspects' digests and the
scored pairs (both hidden), and a marker file that makes it a library.
"""
import hashlib
import json
import os
import re

from awm.atomic import write_json_atomic
from awm.errors import CheckpointError
from awm.library_entry import (
    ENTRY_FORMAT,
    StoredDigest,
    build_entry,
    is_current,
    read_record,
)
from awm.version import VERSION

MARKER = "awm-library.json"
SUSPECTS, PAIRS = ".suspects", ".pairs"       # the suspects' digests and scored pairs, beside the entries


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
class Library:
    """A folder of entries (plus the suspects' digests and the scored pairs, hidden)."""

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

    def entries(self):
        return sorted(n for n in os.listdir(self.directory)
                      if not n.startswith(".") and os.path.isdir(os.path.join(self.directory, n)))

    def entry_path(self, name, suspect=False):
        return os.path.join(self.directory, SUSPECTS, name) if suspect else os.path.join(self.directory, name)

    def add(self, reference, options, device, name=None, suspect=False, progress=False):
        """Digest one model into the library unless an up-to-date entry exists: (name, status)."""
        from awm.readers import open_model

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
            if record and record["source"] == identity and record["options"] == options and is_current(record):
                return name, "up to date"
        checkpoint = open_model(reference, options["vocab_match"], progress)
        build_entry(os.path.dirname(target), name, checkpoint, identity, options, device, progress)
        return name, "added"

    def open(self, name, device, suspect=False, record=None):
        return StoredDigest(self.entry_path(name, suspect), device, record)

    def pair_cache(self):
        return PairCache(os.path.join(self.directory, PAIRS))


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
