"""The first pass over a library: compare compact fingerprints and rule out the entries (or
entry pairs) that cannot be derived from one another, so the exact stage only scores the rest.

An entry the first pass cannot read is not compared (with the reason); one it rules out is
reported as screened out (SCREENED_OUT), with its first-pass evidence and never with exact scores
or a verdict: no witness looked at it. (Results written before this said `"verdict":
"independent"` for such entries; every reader takes either, as it reads only the names.)

Lineage passes through relatives: two children of one parent can each keep what the other
lost (one a redrawn embedding and the parent's body, the other the embedding and a pruned
body), so their own fingerprints share nothing while each is plainly the parent's. `reach`
follows such links from the entries the exact stage confirmed.
"""
from awm.errors import CheckpointError
from awm.library.entry import ENTRY_FORMAT, read_fingerprint, read_record
from awm.library.fingerprint import Probes, first_pass, links

SCREENED_OUT = "screened out (first pass)"


def screened_out(evidence, **names):
    """The record of an entry (or pair) the first pass ruled out: its names and evidence, no verdict."""
    return {**names, "stage": "first pass", "outcome": SCREENED_OUT, "first_pass": evidence}


def _fingerprint(library, name, opts, suspect=False):
    entry = library.entry_path(name, suspect)
    record = read_record(entry)
    if record["entry_format"] != ENTRY_FORMAT:
        raise CheckpointError(entry, f"built by awm {record['version']} (entry format {record['entry_format']}); this awm "
                                     f"reads format {ENTRY_FORMAT}: rebuild it with --add")
    if record["options"] != opts:
        raise CheckpointError(entry, f"built with other options ({record['options']}); rebuild it with --add")
    return read_fingerprint(entry)


def _readable(library, names, opts):
    """{name: fingerprint} of the names whose fingerprint can be read."""
    found = {}
    for name in names:
        try:
            found[name] = _fingerprint(library, name, opts)
        except CheckpointError:
            pass
    return found


def screen(library, suspect, entries, opts):
    """{"candidates": {entry: evidence}, "ruled_out": {entry: evidence}, "not_compared":
    {entry: reason}} of a suspect (a stored suspect digest) against entries."""
    own = Probes([_fingerprint(library, suspect, opts, suspect=True)])
    found = {"candidates": {}, "ruled_out": {}, "not_compared": {}}
    for entry in entries:
        try:
            evidence = own.first_pass(_fingerprint(library, entry, opts))[0]
        except CheckpointError as err:
            found["not_compared"][entry] = str(err)
            continue
        found["candidates" if evidence["candidate"] else "ruled_out"][entry] = evidence
    return found


def screen_pairs(library, pairs, opts):
    """{(a, b): evidence} of the entry pairs the first pass compared; each fingerprint read
    once. A pair with an unreadable entry is left out: the exact stage says what is wrong."""
    fingerprints = _readable(library, dict.fromkeys(n for pair in pairs for n in pair), opts)
    return {(a, b): first_pass(fingerprints[a], fingerprints[b]) for a, b in pairs if a in fingerprints and b in fingerprints}


def reach(library, relatives, entries, opts):
    """{entry: (relative, evidence)} of the entries the first pass links to one of the relatives
    ({name: its first-pass evidence against the suspect}; entries the exact stage found derived)
    through a summary the relative carries and the suspect lost (fingerprint.links). Each
    fingerprint is read once."""
    fingerprints = _readable(library, relatives, opts)      # one scored from its kernels alone links nothing
    names = list(fingerprints)
    if not names or not entries:
        return {}
    held = Probes(list(fingerprints.values()))
    reached = {}
    for entry in entries:
        try:
            evidence = held.first_pass(_fingerprint(library, entry, opts))
        except CheckpointError:
            continue                          # the first pass already listed it as not compared
        link = next(((name, e) for name, e in zip(names, evidence) if links(relatives[name], e)), None)
        if link:
            reached[entry] = link
    return reached


def linked_pairs(ruled_out, evidence, derived):
    """The ruled-out pairs (a, b) with a relative p such that (a, p) was found derived and the
    first pass links p to b (fingerprint.links), or the other way round: the map's `reach`.
    evidence: {(x, y): first-pass evidence} of every pair compared."""
    between = {frozenset(pair): found for pair, found in evidence.items()}
    relatives = {}
    for a, b in derived:
        relatives.setdefault(a, set()).add(b)
        relatives.setdefault(b, set()).add(a)

    def linked(a, b):
        return any(frozenset((p, b)) in between and links(between[frozenset((a, p))], between[frozenset((p, b))])
                   for p in relatives.get(a, ()) if frozenset((a, p)) in between)

    return [(a, b) for a, b in ruled_out if linked(a, b) or linked(b, a)]
