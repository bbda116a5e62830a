"""One-to-many and many-to-many comparisons over a fingerprint library.

`identify`: a suspect against every entry, ranked. `family_map`: every pair of entries, for
the N x N matrix and the lineage picture. Both digest each model once and keep each scored
pair on disk, so an interrupted run resumes where it stopped; both run their pieces through
an executor (this process, or Ray tasks).
"""
import functools
import os

import torch

import executors
import fingerprint
import report
from errors import AwmError, CheckpointError
from library import Library, read_record

# Best matches first: a derived verdict outranks a higher score with another verdict.
VERDICT_ORDER = {"derived": 0, "derived (disguised)": 0, "inconclusive": 1, "independent": 2, "undefined": 3}


def options(with_circuit=True, vocab_match="bytes", precision="exact"):
    """What a digest depends on besides the weights: entries built otherwise are not compared."""
    return {"with_circuit": bool(with_circuit), "vocab_match": vocab_match, "precision": precision}


# ----------------------------------------------------------------------------- tasks
# Entries scored against one stored digest in one pass over its layers. A batch's pairs are
# saved when it ends, so a run killed mid-batch recomputes at most this many pairs.
BATCH_ENTRIES = 8


def add_task(job):
    """Digest one model into the library: {"reference", "name", "status"} or an "error"."""
    directory, reference, name, opts, device, suspect = job
    try:
        name, status = Library(directory).add(reference, opts, torch.device(device), name=name, suspect=suspect)
        return {"reference": reference, "name": name, "status": status}
    except AwmError as err:
        return {"reference": reference, "name": name, "error": str(err)}


def _checked_record(library, name, suspect, opts):
    record = read_record(library.entry_path(name, suspect))
    if record["options"] != opts:
        raise CheckpointError(library.entry_path(name, suspect), f"built with other options ({record['options']}); rebuild it with --add")
    return record


def batch_task(job):
    """Score one stored digest (model a: a suspect or an entry) against a batch of entries
    (model b), reading its layers once; pairs scored before are read from disk instead.
    Returns [{"record"} or {"error"}] in the batch's order."""
    directory, (name, suspect), others, opts, device, null, progress = job
    library = Library(directory)
    cache = library.pair_cache()
    try:
        shared_entry = _checked_record(library, name, suspect, opts)
    except CheckpointError as err:
        return [{"error": str(err)} for _ in others]
    outcomes, to_score = {}, {}
    for other in others:
        try:
            entry = _checked_record(library, other, False, opts)
        except CheckpointError as err:
            outcomes[other] = {"error": str(err)}
            continue
        key = cache.key(shared_entry["build_id"], entry["build_id"], opts, null)
        cached = cache.get(key)
        if cached is not None:
            outcomes[other] = {"record": cached}
        else:
            to_score[other] = (key, entry)
    if to_score:
        device = torch.device(device)
        try:
            # The records just read are handed on: an entry's vocabulary is parsed once.
            shared = library.open(name, device, suspect, shared_entry)
            openers = [functools.partial(library.open, o, device, False, entry) for o, (_, entry) in to_score.items()]
            records = fingerprint.compare_many(shared, openers, device, null, progress)
        except AwmError as err:
            records = [err] * len(to_score)
        for (other, (key, _)), record in zip(to_score.items(), records):
            if isinstance(record, AwmError):
                outcomes[other] = {"error": str(record)}
                continue
            record["model_a"]["name"], record["model_b"]["name"] = name, other
            cache.put(key, record)
            outcomes[other] = {"record": record}
    return [outcomes[other] for other in others]


def batch_jobs(directory, shared, others, opts, device, null, executor, progress):
    """batch_task jobs for (shared, other) over the others: batches of at most BATCH_ENTRIES,
    split evenly over the executor's workers when it has several (whose tasks show no bars)."""
    size = max(1, min(BATCH_ENTRIES, -(-len(others) // executors.workers(executor))))
    inner = progress and executor == "local"
    return [(directory, shared, others[start:start + size], opts, device, null, inner) for start in range(0, len(others), size)]


def run_batches(jobs, executor, description, progress):
    return [outcome for done in executors.run_all(batch_task, jobs, executor, description, progress) for outcome in done]


# ----------------------------------------------------------------------------- identify
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
    matches.sort(key=lambda r: (VERDICT_ORDER.get(r["verdict"], 9), -(r["scores"]["final"] or 0.0)))
    return {
        "tool": "awm", "version": report.TOOL_VERSION, "suspect": suspect, "library": library.directory,
        "suspect_digest": "reused" if added["status"] == "up to date" else "built",
        "matches": matches,
        "not_compared": [{"entry": e, "reason": o["error"]} for e, o in zip(entries, outcomes) if "error" in o],
    }


def _percent(value):
    return "      n/a" if value is None else f"{value:8.2f} %"


def identify_lines(result):
    lines = [f"suspect {result['suspect']} against {len(result['matches']) + len(result['not_compared'])} entries of {result['library']}"]
    if result["matches"]:
        lines.append(f"  {'rank':>4}  {'entry':40s} {'AWM':>10} {'QK-circuit':>10}  {'dims confirmed':>15}  verdict")
    for rank, record in enumerate(result["matches"], 1):
        test = record["evidence"].get("correspondence")
        confirmed = f"{test['matched_dims']}/{test['target_dims']}" if test else "not tested"
        lines.append(f"  {rank:>4}  {record['model_b']['name'][:40]:40s} {_percent(record['scores']['final'])} "
                     f"{_percent(record['scores']['qk_circuit'])}  {confirmed:>15}  {record['verdict']}")
    derived = [r for r in result["matches"] if r["verdict"].startswith("derived")]
    if result["matches"]:
        lines.append(f"  best match: {derived[0]['model_b']['name']} ({derived[0]['verdict']})" if derived
                     else "  no entry is an ancestor or sibling: the suspect matches nothing in the library")
    for skipped in result["not_compared"]:
        lines.append(f"  not compared: {skipped['entry']}: {skipped['reason']}")
    return lines


# ----------------------------------------------------------------------------- adding and mapping
def add_models(references, directory, opts, device, executor="local", progress=False):
    return add_models_named({ref: None for ref in references}, directory, opts, device, executor, progress)


def add_models_named(names, directory, opts, device, executor="local", progress=False):
    """Digest {reference: entry name or None (its default)} into the library, each once."""
    library, task_device = Library(directory, create=True), executors.task_device(executor, device.type)
    jobs = [(library.directory, ref, name, opts, task_device, False) for ref, name in names.items()]
    return executors.run_all(add_task, jobs, executor, "digests", progress)


def score_pairs(directory, named_pairs, opts, device, null, executor="local", progress=False):
    """Outcomes ({"record"} or {"error"}) of entry pairs [(name_a, name_b), ...], in order;
    the pairs that share model a are scored in batches (its layers read once per batch)."""
    task_device = executors.task_device(executor, device.type)
    by_first = {}
    for number, (a, b) in enumerate(named_pairs):
        by_first.setdefault(a, []).append(number)
    jobs = [job for a, numbers in by_first.items()
            for job in batch_jobs(directory, (a, False), [named_pairs[n][1] for n in numbers], opts, task_device, null, executor, progress)]
    order = [number for numbers in by_first.values() for number in numbers]
    outcomes = [None] * len(named_pairs)
    for number, outcome in zip(order, run_batches(jobs, executor, "pair batches", progress)):
        outcomes[number] = outcome
    return outcomes


def family_pairs(directory):
    entries = Library(directory).entries()
    return [(a, b) for i, a in enumerate(entries) for b in entries[i + 1:]]


def entry_name_for(reference, taken):
    """A library name for a suite's model: its base name, made unique within the run."""
    from library import default_name

    name, number = default_name(reference), 1
    while name in taken and taken[name] != reference:
        number += 1
        name = f"{default_name(reference)}-{number}"
    taken[name] = reference
    return name


# ----------------------------------------------------------------------------- command line
def run_from_args(args, device, null):
    from errors import AwmError

    if not args.library:
        raise AwmError("--add, --identify and --map need --library DIR")
    opts = options(not args.paper_only, args.vocab_match, args.precision)
    progress = not args.quiet
    if args.add:
        outcomes = add_models(args.add, args.library, opts, device, args.executor, progress)
        for outcome in outcomes:
            print(f"  {outcome['reference']}: " + (f"error: {outcome['error']}" if "error" in outcome else f"{outcome['status']} as '{outcome['name']}'"))
        return 2 if any("error" in o for o in outcomes) else 0
    if args.identify:
        result = identify(args.identify, args.library, opts, device, null, args.executor, progress)
        print("\n".join(identify_lines(result)))
        if args.output:
            report.write_json_atomic(args.output, result)
            print(f"  report  {os.path.abspath(args.output)}")
        if not result["matches"]:
            raise AwmError(f"{args.identify}: no library entry could be compared (reasons above)")
        return 0
    import suites

    run, interrupted = suites.run_family_map(args.library, device, null, args.results_dir, progress, opts, args.executor)
    return suites.print_run(run, interrupted)
