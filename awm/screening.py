"""The first pass over a library: compare compact fingerprints and rule out the entries (or
entry pairs) that cannot be derived from one another, so the exact stage only scores the rest.

An entry the first pass cannot read is not compared (with the reason); one it rules out is
independent by the first-pass evidence alone, and reported as such, never with exact scores.
"""
from awm.errors import CheckpointError
from awm.fingerprint import first_pass
from awm.library_entry import ENTRY_FORMAT, read_fingerprint, read_record


def _fingerprint(library, name, opts, suspect=False):
    entry = library.entry_path(name, suspect)
    record = read_record(entry)
    if record["entry_format"] != ENTRY_FORMAT:
        raise CheckpointError(entry, f"built by awm {record['version']} (entry format {record['entry_format']}); this awm "
                                     f"reads format {ENTRY_FORMAT}: rebuild it with --add")
    if record["options"] != opts:
        raise CheckpointError(entry, f"built with other options ({record['options']}); rebuild it with --add")
    return read_fingerprint(entry)


def screen(library, suspect, entries, opts):
    """{"candidates": {entry: evidence}, "ruled_out": {entry: evidence}, "not_compared":
    {entry: reason}} of a suspect (a stored suspect digest) against entries."""
    own = _fingerprint(library, suspect, opts, suspect=True)
    found = {"candidates": {}, "ruled_out": {}, "not_compared": {}}
    for entry in entries:
        try:
            evidence = first_pass(own, _fingerprint(library, entry, opts))
        except CheckpointError as err:
            found["not_compared"][entry] = str(err)
            continue
        found["candidates" if evidence["candidate"] else "ruled_out"][entry] = evidence
    return found


def screen_pairs(library, pairs, opts):
    """{(a, b): evidence} of the entry pairs the first pass rules out; each fingerprint read
    once. A pair with an unreadable entry is kept: the exact stage says what is wrong."""
    fingerprints, ruled_out = {}, {}
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        try:
            fingerprints[name] = _fingerprint(library, name, opts)
        except CheckpointError:
            pass
    for a, b in pairs:
        if a in fingerprints and b in fingerprints:
            evidence = first_pass(fingerprints[a], fingerprints[b])
            if not evidence["candidate"]:
                ruled_out[(a, b)] = evidence
    return ruled_out
