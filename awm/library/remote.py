"""A published fingerprint library, read from a Hugging Face dataset repo.

`--library owner/name` (or `hf://datasets/owner/name[@revision]`) resolves the repo to a
commit and fetches its manifest first; an entry's record and fingerprint are fetched when the
first pass reads them, its kernels only if the exact stage needs them. Every file is checked
against the manifest's size and SHA-256 before it is used, so a lying manifest or a damaged
upload costs that entry only. The local copy is a library folder of its own under the Hub
cache, which also holds this machine's suspects and scored pairs; the repo is never written.
"""
import hashlib
import json
import os
import re

from awm.atomic import write_json_atomic
from awm.errors import CheckpointError

DATASET_PREFIX = "hf://datasets/"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
ENTRY_NAME = re.compile(r"^[\w+-][\w.+-]*$")


def parse_library_reference(text):
    """A dataset HubReference for `hf://datasets/owner/name[@revision]`, or for a bare
    `owner/name[@revision]` that is not a local folder; else None (a local library)."""
    from awm.readers import hub

    text = str(text)
    if text.startswith(DATASET_PREFIX):
        match = re.match(rf"^(?P<repo>{hub.REPO_ID})(?:@(?P<revision>[^/@\s]+))?$", text[len(DATASET_PREFIX):])
        if not match:
            raise CheckpointError(text, "not a Hub dataset reference: expected hf://datasets/owner/name[@revision]")
        return hub.HubReference(match["repo"], match["revision"], repo_type="dataset")
    if os.path.exists(os.path.expanduser(text)):
        return None
    match = re.match(rf"^(?P<repo>{hub.REPO_ID})(?:@(?P<revision>[^/@\s]+))?$", text)
    return hub.HubReference(match["repo"], match["revision"], repo_type="dataset") if match else None


def file_facts(path, block=1 << 24):
    """{"size", "sha256"} of one file, as the manifest records it (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def _read_json(path, where):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(where, f"unreadable ({err.__class__.__name__})") from None


def mirror(reference, marker, manifest_name):
    """The local folder that stands for the published library at `reference` (a dataset
    HubReference): created with the repo's marker and manifest on first use, a library folder
    whose marker names the repo and commit it mirrors."""
    from awm.readers import hub

    snapshot = hub.HubSnapshot(reference)
    folder = os.path.join(hub.cache_root(), "libraries", reference.repo.replace("/", "--"), snapshot.commit)
    if os.path.isfile(os.path.join(folder, marker)):
        return folder
    for name in (marker, manifest_name):
        if name not in snapshot.sizes:
            raise CheckpointError(f"{snapshot.where}@{snapshot.commit[:12]}", f"is not an awm library (no {name})")
    scratch = os.path.join(folder, ".published")
    published = {name: _read_json(snapshot.download(name, os.path.join(scratch, name)), f"{snapshot.where}/{name}")
                 for name in (marker, manifest_name)}
    if not isinstance(published[manifest_name], dict) or not isinstance(published[manifest_name].get("entries"), dict):
        raise CheckpointError(f"{snapshot.where}/{manifest_name}", "is not an awm library manifest (no entries)")
    write_json_atomic(os.path.join(folder, manifest_name), published[manifest_name])
    write_json_atomic(os.path.join(folder, marker), {**published[marker], "mirror_of": {
        "repo": reference.repo, "repo_type": "dataset", "commit": snapshot.commit, "manifest": manifest_name}})
    return folder


class Mirror:
    """The entries of a published library, fetched into a local folder on demand."""

    def __init__(self, folder, facts):
        self.folder = folder
        self.repo, self.commit = facts["repo"], facts["commit"]
        manifest = _read_json(os.path.join(folder, facts["manifest"]), os.path.join(folder, facts["manifest"]))
        self.lines = {n: line for n, line in manifest["entries"].items() if ENTRY_NAME.match(n)}
        self._snapshot = None

    def entries(self):
        return sorted(self.lines)

    @property
    def snapshot(self):
        from awm.readers import hub

        if self._snapshot is None:
            self._snapshot = hub.HubSnapshot(hub.HubReference(self.repo, self.commit, repo_type="dataset"))
        return self._snapshot

    def ensure(self, name, filenames):
        """Fetch the entry's files that are not here yet; each checked against the manifest."""
        where = f"hf://datasets/{self.repo}@{self.commit[:12]}/{name}"
        line = self.lines.get(name)
        if not isinstance(line, dict) or not isinstance(line.get("files"), dict):
            raise CheckpointError(where, "the library's manifest does not list this entry's files")
        for filename in filenames:
            target = os.path.join(self.folder, name, filename)
            if os.path.isfile(target):
                continue
            facts = line["files"].get(filename)
            if facts is None:
                raise CheckpointError(f"{where}/{filename}", "not in the library's manifest: this entry has no such file")
            self._fetch(f"{name}/{filename}", target, facts, f"{where}/{filename}")

    def _fetch(self, repo_path, target, facts, where):
        if not (isinstance(facts, dict) and isinstance(facts.get("size"), int) and SHA256.match(str(facts.get("sha256")))):
            raise CheckpointError(where, "the library's manifest gives no valid size and SHA-256 for this file")
        held = self.snapshot.sizes.get(repo_path)
        if held is None:
            raise CheckpointError(where, "listed in the manifest but missing from the repo")
        if held != facts["size"]:
            raise CheckpointError(where, f"the manifest says {facts['size']} bytes, the repo holds {held}: not used")
        partial = target + ".unchecked"
        self.snapshot.download(repo_path, partial)
        if file_facts(partial)["sha256"] != facts["sha256"]:
            os.remove(partial)
            raise CheckpointError(where, "its SHA-256 differs from the manifest's (damaged or replaced): not used")
        os.replace(partial, target)
