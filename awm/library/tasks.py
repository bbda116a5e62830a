"""The pieces of work over a fingerprint library: digest a model into it, score one stored
digest against a batch of entries. Each is a module-level function of one argument that an
executor runs here or as a Ray task; scored pairs are kept on disk, so a killed run resumes.
"""
import functools

import torch

from awm import executors
from awm.errors import AwmError, CheckpointError, SourceUnavailable
from awm.library.batch import compare_many
from awm.library.entry import read_record
from awm.library.folder import Library, default_name


def options(with_circuit=True, vocab_match="bytes", precision="exact"):
    """What a digest depends on besides the weights: entries built otherwise are not compared."""
    return {"with_circuit": bool(with_circuit), "vocab_match": vocab_match, "precision": precision}


# Entries scored against one stored digest in one pass over its layers. A batch's pairs are
# saved when it ends, so a run killed mid-batch recomputes at most this many pairs.
BATCH_ENTRIES = 8


def add_task(job):
    """Digest one model into the library: {"reference", "name", "status"} or an "error"."""
    directory, reference, name, opts, device, suspect, exact = job
    try:
        name, status = Library(directory).add(reference, opts, torch.device(device), name=name, suspect=suspect, exact=exact)
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
            records = compare_many(shared, openers, device, null, progress)
        except AwmError as err:
            records = [err] * len(to_score)
        for (other, (key, _)), record in zip(to_score.items(), records):
            if isinstance(record, AwmError):
                outcomes[other] = {"error": str(record), "source_unavailable": isinstance(record, SourceUnavailable)}
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


def add_models(references, directory, opts, device, executor="local", progress=False, exact=False):
    return add_models_named({ref: None for ref in references}, directory, opts, device, executor, progress, exact)


def add_models_named(names, directory, opts, device, executor="local", progress=False, exact=False):
    """Digest {reference: entry name or None (its default)} into the library, each once;
    exact: keep the kernels too (else a compact fingerprint)."""
    library, task_device = Library(directory, create=True), executors.task_device(executor, device.type)
    jobs = [(library.directory, ref, name, opts, task_device, False, exact) for ref, name in names.items()]
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
    name, number = default_name(reference), 1
    while name in taken and taken[name] != reference:
        number += 1
        name = f"{default_name(reference)}-{number}"
    taken[name] = reference
    return name
