"""Identify a suspect: score it against every entry of a library and rank the entries."""
from awm import executors, family_tree
from awm.errors import AwmError, CheckpointError
from awm.library import Library
from awm.library_tasks import add_task, batch_jobs, run_batches
from awm.verdict import RANK, is_derived
from awm.version import VERSION


SUSPECT = "<suspect>"          # the suspect's name inside the placement: "<" cannot begin an entry name


def identify(suspect, directory, opts, device, null, executor="local", progress=False):
    """Score the suspect against every entry; returns the JSON-ready result."""
    library = Library(directory)
    entries = library.entries()
    if not entries:
        raise CheckpointError(library.directory, "the library has no entries yet: add models with --add")
    task_device = executors.task_device(executor, device.type)
    added = executors.run_all(add_task, [(library.directory, suspect, None, opts, task_device, True)], executor, "digest suspect", progress)[0]
    if "error" in added:
        raise AwmError(added["error"])
    jobs = batch_jobs(library.directory, (added["name"], True), entries, opts, task_device, null, executor, progress)
    outcomes = run_batches(jobs, executor, "entry batches", progress)
    matches = [o["record"] for o in outcomes if "record" in o]
    matches.sort(key=lambda r: (RANK.get(r["verdict"], 9), -((r.get("aligned_scores") or r["scores"])["final"] or 0.0)))
    return {
        "placement": _placement(library, added["name"], matches, device),
        "tool": "awm", "version": VERSION, "suspect": suspect, "library": library.directory,
        "suspect_digest": "reused" if added["status"] == "up to date" else "built",
        "matches": matches,
        "not_compared": [{"entry": e, "reason": o["error"]} for e, o in zip(entries, outcomes) if "error" in o],
    }


def _placement(library, suspect, matches, device):
    """Where the suspect sits among the entries it matched (family_tree.place). Inside, the
    suspect goes by a name no entry can have."""
    if not any(is_derived(r["verdict"]) for r in matches):
        return {"parents": [], "layers": None, "derived_from_it": []}
    records = [{**r, "model_a": {**r["model_a"], "name": SUSPECT}} for r in matches]
    metas = {SUSPECT: records[0]["model_a"], **{r["model_b"]["name"]: r["model_b"] for r in records}}
    open_digest = lambda name: library.open(suspect if name == SUSPECT else name, device, suspect=name == SUSPECT)
    return family_tree.place(SUSPECT, records, metas, open_digest)
