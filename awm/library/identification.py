"""Identify a suspect: score it against every entry of a library and rank the entries."""
from awm import executors
from awm.errors import AwmError, CheckpointError
from awm.library.folder import Library
from awm.library.screening import reach, screen, screened_out
from awm.library.tasks import add_task, batch_jobs, run_batches
from awm.tree import placement
from awm.version import VERSION
from awm.witnesses.verdict import RANK, is_derived

SUSPECT = "<suspect>"          # the suspect's name inside the placement: "<" cannot begin an entry name


def identify(suspect, directory, opts, device, null, executor="local", progress=False, exhaustive=False):
    """Score the suspect against every entry in two stages: the first pass compares compact
    fingerprints and rules out the entries it can; every other entry gets the exact pair (from
    its stored kernels, or from its source), and so does every entry the first pass links to
    one found derived. exhaustive: every entry gets the exact pair.
    Returns the JSON-ready result."""
    library = Library(directory)
    entries = library.entries()
    if not entries:
        raise CheckpointError(library.directory, "the library has no entries yet: add models with --add")
    task_device = executors.task_device(executor, device.type)
    job = (library.directory, suspect, None, opts, task_device, True, True)
    added = executors.run_all(add_task, [job], executor, "digest suspect", progress)[0]
    if "error" in added:
        raise AwmError(added["error"])
    screened = screen(library, added["name"], entries, opts)
    if exhaustive:
        screened = {"candidates": {e: screened["candidates"].get(e) or screened["ruled_out"].get(e) for e in entries},
                    "ruled_out": {}, "not_compared": {}}
    outcomes = _exact_stage(library, added["name"], screened, opts, task_device, null, executor, progress)
    matches = [{**o["record"], "stage": "exact", "first_pass": screened["candidates"][e]} for e, o in outcomes.items() if "record" in o]
    matches.sort(key=lambda r: (RANK.get(r["verdict"], 9), -((r.get("aligned_scores") or r["scores"])["final"] or 0.0)))
    return {
        "tool": "awm", "version": VERSION, "suspect": suspect, "library": library.directory,
        "suspect_digest": "reused" if added["status"] == "up to date" else "built",
        "matches": matches,
        "placement": _placement(library, added["name"], matches, device),
        "ruled_out": [screened_out(evidence, entry=e) for e, evidence in screened["ruled_out"].items()],
        "first_pass_only": [{"entry": e, "stage": "first pass", "first_pass": screened["candidates"][e], "reason": o["error"]}
                            for e, o in outcomes.items() if o.get("source_unavailable")],
        "not_compared": [{"entry": e, "reason": reason} for e, reason in screened["not_compared"].items()] +
                        [{"entry": e, "reason": o["error"]} for e, o in outcomes.items() if "error" in o and not o.get("source_unavailable")],
    }


def _exact_stage(library, suspect, screened, opts, device, null, executor, progress):
    """{entry: outcome} of the exact pairs: the first pass's candidates, then, round by round,
    the ruled-out entries it links to an entry just found derived (moved to the candidates
    with that link as their evidence), until a round finds no new one."""
    outcomes, pending = {}, list(screened["candidates"])
    while pending:
        jobs = batch_jobs(library.directory, (suspect, True), pending, opts, device, null, executor, progress)
        outcomes.update(zip(pending, run_batches(jobs, executor, "exact stage", progress)))
        relatives = {e: screened["candidates"][e] for e in pending if is_derived(outcomes[e].get("record", {}).get("verdict"))}
        reached = reach(library, relatives, list(screened["ruled_out"]), opts)
        for entry, (probe, link) in reached.items():
            own = screened["ruled_out"].pop(entry)
            screened["candidates"][entry] = {**own, "candidate": True, "via": probe,
                                             "why": f"linked through {probe}, which the exact stage found derived: {link['why']} "
                                                    f"(against the suspect: {own['why']})"}
        pending = list(reached)
    return outcomes


def _placement(library, suspect, matches, device):
    """Where the suspect sits among the entries it matched (awm.tree.placement). Inside, the
    suspect goes by a name no entry can have."""
    if not any(is_derived(r["verdict"]) for r in matches):
        return {"parents": [], "layers": None, "derived_from_it": []}
    records = [{**r, "model_a": {**r["model_a"], "name": SUSPECT}} for r in matches]
    metas = {SUSPECT: records[0]["model_a"], **{r["model_b"]["name"]: r["model_b"] for r in records}}
    open_digest = lambda name: library.open(suspect if name == SUSPECT else name, device, suspect=name == SUSPECT)
    return placement.place(SUSPECT, records, metas, open_digest)
