"""A reference library: compact entries (a fingerprint and the model's source), a first pass
that keeps every derived model and rules out independent ones, an exact stage whose answer is
the exhaustive one, and a library published as a Hub dataset repo, read lazily and checked."""
import itertools
import json
import os
import shutil

import factory
import numpy as np
import pytest
import surgery
import torch
from safetensors.torch import save_file

from awm import cli
from awm.console import identify_lines
from awm.errors import CheckpointError
from awm.library import entry as library_entry
from awm.library import fingerprint, identification, screening
from awm.library import folder as library
from awm.library import tasks as library_tasks
from awm.library.folder import MANIFEST, Library, library_folder
from awm.library.remote import file_facts
from awm.witnesses.verdict import is_derived, load_reference

CPU = torch.device("cpu")
OPTIONS = library_tasks.options()
HIDDEN, LAYERS, VOCAB = 96, 4, 900
DERIVED = ("tuned", "pruned-width", "pruned-depth", "redrawn", "rotated", "weak")
INDEPENDENT = ("other-1", "other-2", "other-3")


def trained_like(seed):
    return factory.structured_llama_tensors(hidden=HIDDEN, layers=LAYERS, vocab=VOCAB, seed=seed)


def tuned(tensors, seed, amount=0.05):
    generator = torch.Generator().manual_seed(seed)
    return {k: v + amount * v.std() * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A base, six kinds of derived model (fine-tuned, width- and depth-pruned, embedding
    redrawn, residual stream rotated, attention mostly redrawn) and three independent models."""
    root = tmp_path_factory.mktemp("family")
    tokens = factory.anchored_tokens(VOCAB)
    base = trained_like(0)
    depth_pruned, depth = surgery.drop_layers(base, [2])
    models = {
        "base": (base, {}),
        "tuned": (tuned(base, 1), {}),
        "pruned-width": (surgery.prune_hidden(base, torch.arange(80)), {"hidden_size": 80, "head_dim": HIDDEN // 4}),
        "pruned-depth": (depth_pruned, {"num_hidden_layers": depth}),
        "redrawn": (surgery.redraw_embedding(base, torch.Generator().manual_seed(5)), {}),
        "rotated": (surgery.rotate_residual(base, 6), {}),
        "weak": (surgery.weak_positive(base, LAYERS, keep=0.2), {}),
        **{name: (trained_like(10 + k), {}) for k, name in enumerate(INDEPENDENT)},
    }
    config = factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB)
    return {name: factory.write_safetensors_model(str(root / name), tensors, {**config, **changes}, tokens)
            for name, (tensors, changes) in models.items()}


def build(directory, family, names, exact=False):
    outcomes = library_tasks.add_models([family[n] for n in names], str(directory), OPTIONS, CPU, exact=exact)
    assert all("error" not in o for o in outcomes), outcomes
    return str(directory)


def entries_of(family):
    return [n for n in family if n != "base"]


def comparable(record):
    record = json.loads(json.dumps(record))
    for key in ("timings", "stage", "first_pass"):
        record.pop(key, None)
    return record


def tree_of(results_dir):
    tree = json.loads((results_dir / "lineage.json").read_text())["tree"]
    return {node["name"]: sorted(p["name"] for p in node["parents"]) for node in tree["nodes"]}


@pytest.fixture(scope="module")
def compact(family, tmp_path_factory):
    return build(tmp_path_factory.mktemp("compact") / "lib", family, entries_of(family))


# ----------------------------------------------------------------------------- entries
def test_a_compact_entry_is_a_fingerprint_and_a_source(compact, family, tmp_path):
    entry = os.path.join(compact, "tuned")
    assert sorted(os.listdir(entry)) == [library_entry.DIGEST_FILE, library_entry.FINGERPRINT_FILE]
    record = library_entry.read_record(entry)
    assert record["kind"] == "compact" and record["source"]["path"] == family["tuned"] and "vocab" not in record
    held = library_entry.read_fingerprint(entry)
    assert len(held["anchors"]) == len(fingerprint.ANCHORS)              # the vocabulary holds every anchor
    assert held["anchor_columns"].shape == (fingerprint.COLUMN_ANCHORS, HIDDEN)
    payload = fingerprint.payload_bytes(len(held["anchors"]), fingerprint.COLUMN_ANCHORS, HIDDEN, LAYERS)
    size = os.path.getsize(os.path.join(entry, library_entry.FINGERPRINT_FILE))
    assert payload < size < payload + 1024
    manifest = Library(compact).manifest()
    assert sorted(manifest["entries"]) == sorted(entries_of(family))
    line = manifest["entries"]["tuned"]
    assert line["kind"] == "compact" and line["source"] == record["source"] and set(line["files"]) == set(os.listdir(entry))
    exact = build(tmp_path / "exact", family, ("tuned",), exact=True)
    assert sorted(os.listdir(os.path.join(exact, "tuned"))) == sorted(library.ENTRY_FILES)
    umask = os.umask(0)
    os.umask(umask)
    for path, mode in ((entry, 0o777), (os.path.join(entry, library_entry.DIGEST_FILE), 0o666), (os.path.join(compact, MANIFEST), 0o666)):
        assert os.stat(path).st_mode & 0o777 == mode & ~umask, path        # a shared library is readable by its team
    exact_line = Library(exact).manifest()["entries"]["tuned"]
    for folder, listed in ((entry, line), (os.path.join(exact, "tuned"), exact_line)):
        assert listed["bytes"] == sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert exact_line["kind"] == "exact" and exact_line["bytes"] > line["bytes"]


def test_a_malformed_fingerprint_is_refused(compact, tmp_path):
    entry = tmp_path / "entry"
    shutil.copytree(os.path.join(compact, "tuned"), entry)
    held = library_entry.read_fingerprint(str(entry))
    for broken, why in (({**held, "anchors": held["anchors"].flip(0).short()}, "out of order"),
                        ({**held, "anchor_gram": held["anchor_gram"][1:]}, "malformed"),
                        ({**held, "anchors": held["anchors"].long()}, "wrong data types")):
        save_file({k: v.contiguous() for k, v in broken.items()}, str(entry / library_entry.FINGERPRINT_FILE))
        with pytest.raises(CheckpointError) as raised:
            library_entry.read_fingerprint(str(entry))
        assert why in str(raised.value) and library_entry.FINGERPRINT_FILE in str(raised.value)


def unpacked(held):
    """{(anchor, anchor): cosine} of a fingerprint's packed Gram, written out."""
    anchors, values = held["anchors"].tolist(), held["anchor_gram"].tolist()
    pairs = [(a, b) for i, a in enumerate(anchors) for b in anchors[i + 1:]]
    return dict(zip(pairs, (v / 127 for v in values)))


def mean_gap(a, b):
    defined = ~(np.isnan(a) | np.isnan(b))
    return np.abs(a - b)[defined].mean() if defined.any() else np.inf


def test_the_first_pass_computes_its_definitions(compact):
    held = {name: library_entry.read_fingerprint(os.path.join(compact, name)) for name in ("tuned", "pruned-depth", "other-1")}
    keep = torch.arange(0, len(fingerprint.ANCHORS), 3)                     # a tokenizer holding a third of the anchors
    gram = {pair: value for pair, value in unpacked(held["other-1"]).items() if pair[0] in keep and pair[1] in keep}
    held["few anchors"] = {**held["other-1"], "anchors": keep, "anchor_gram": torch.tensor([round(v * 127) for v in gram.values()], dtype=torch.int8),
                           "anchor_columns": held["other-1"]["anchor_columns"][keep[keep < fingerprint.COLUMN_ANCHORS]]}
    probes = [held["tuned"], held["pruned-depth"]]
    for name, entry in held.items():
        for probe, evidence in zip(probes, fingerprint.Probes(probes).first_pass(entry)):
            a, b = unpacked(probe), unpacked(entry)
            common = sorted(set(a) & set(b))
            assert evidence["embedding"] == pytest.approx(np.corrcoef([a[p] for p in common], [b[p] for p in common])[0, 1], abs=1e-4)
            assert evidence["columns"] == pytest.approx(column_match(probe, entry), abs=1e-4)
            x, y = probe["spectra"].numpy(), entry["spectra"].numpy()
            shallow, deep = sorted((x, y), key=len)
            body = min(min(np.mean([mean_gap(shallow[i, kind], deep[j, kind]) for i, j in enumerate(chosen)])
                           for chosen in (itertools.permutations(range(len(deep)), len(shallow)) if len(x) != len(y) else [range(len(x))]))
                       for kind in range(3))
            assert evidence["body"] == pytest.approx(body, abs=1e-5), name
            assert evidence == fingerprint.first_pass(probe, entry)
            assert evidence["candidate"] == (evidence["embedding"] >= fingerprint.EMBEDDING_INHERITED or evidence["body"] <= fingerprint.BODY_CANDIDATE
                                             or evidence["columns"] >= fingerprint.COLUMNS_INHERITED)


def column_match(probe, entry):
    """The column match by its definition, one column at a time."""
    rows = {name: {int(a): k for k, a in enumerate(f["anchors"][f["anchors"] < fingerprint.COLUMN_ANCHORS])} for name, f in (("p", probe), ("e", entry))}
    common = sorted(set(rows["p"]) & set(rows["e"]))
    columns = [f["anchor_columns"][[rows[name][a] for a in common]].double() for name, f in (("p", probe), ("e", entry))]
    narrow, wide = sorted(columns, key=lambda c: c.shape[1])
    cosine = lambda x, y: float(torch.dot(x - x.mean(), y - y.mean()) / ((x - x.mean()).norm() * (y - y.mean()).norm()))
    chosen = sorted({round(k * (narrow.shape[1] - 1) / (fingerprint.COLUMN_PROBES - 1)) for k in range(fingerprint.COLUMN_PROBES)})
    return float(np.median([max(abs(cosine(narrow[:, i], wide[:, j])) for j in range(wide.shape[1])) for i in chosen]))


def test_a_relative_links_only_through_what_the_suspect_lost_and_inheritance_leaves():
    evidence = fingerprint.first_pass_evidence
    new_embedding = evidence(0.01, 0.001, 0.2)        # the suspect and its relative: the same body, another embedding
    assert fingerprint.links(new_embedding, evidence(0.9, 0.3, 0.95)) == ["geometry", "columns"]
    assert fingerprint.links(new_embedding, evidence(0.01, 0.0, 0.2)) == []      # the body: within the suspect's own reach
    pruned = evidence(0.9, 0.3, 0.95)                 # the same embedding, a changed body
    assert fingerprint.links(pruned, evidence(0.01, 0.004, 0.2)) == ["body"]
    assert fingerprint.links(pruned, evidence(0.01, 0.03, 0.2)) == []           # a first-pass candidate, not an inherited body
    assert fingerprint.links(evidence(None, 0.3), evidence(0.9, 0.3, 0.2)) == ["geometry"]
    # Unrelated real embeddings reach 0.8 in geometry (a shared semantic outline) and 0.29 in columns: no link.
    assert fingerprint.links(evidence(None, 0.3), evidence(0.8, 0.3, 0.29)) == []
    # A rotated suspect keeps its parent's geometry, not its columns; a sibling that kept the
    # parent's columns (width-pruned) links through them.
    rotated = evidence(1.0, 0.001, 0.25)
    assert fingerprint.links(rotated, evidence(0.8, 0.3, 0.95)) == ["columns"]


# ----------------------------------------------------------------------------- two stages
def test_the_first_pass_keeps_every_derived_model_and_rules_out_the_independent(compact, family):
    result = identification.identify(family["base"], compact, OPTIONS, CPU, load_reference(None))
    assert sorted(r["model_b"]["name"] for r in result["matches"]) == sorted(DERIVED)
    assert all(r["stage"] == "exact" and r["first_pass"]["candidate"] for r in result["matches"])
    assert sorted(e["entry"] for e in result["ruled_out"]) == sorted(INDEPENDENT)
    assert all(e["stage"] == "first pass" and not e["first_pass"]["candidate"] and "scores" not in e for e in result["ruled_out"])
    # Screened out is not a verdict: no witness looked at these entries.
    assert all(e["outcome"] == screening.SCREENED_OUT and "verdict" not in e for e in result["ruled_out"])
    assert all(is_derived(r["verdict"]) for r in result["matches"]), [(r["model_b"]["name"], r["verdict"]) for r in result["matches"]]
    # Results written before (ruled-out entries with "verdict": "independent") still read.
    older = {**result, "ruled_out": [{"entry": e["entry"], "stage": "first pass", "verdict": "independent", "first_pass": e["first_pass"]}
                                     for e in result["ruled_out"]]}
    assert identify_lines(older) == identify_lines(result)
    assert any(f"{len(INDEPENDENT)} entries screened out" in line for line in identify_lines(result))


def test_the_two_stages_give_the_exhaustive_answer(compact, family):
    staged = identification.identify(family["tuned"], compact, OPTIONS, CPU, load_reference(None))
    exhaustive = identification.identify(family["tuned"], compact, OPTIONS, CPU, load_reference(None), exhaustive=True)
    assert len(exhaustive["matches"]) == len(entries_of(family)) and not exhaustive["ruled_out"]
    by_entry = {r["model_b"]["name"]: r for r in exhaustive["matches"]}
    assert [comparable(r) for r in staged["matches"]] == [comparable(by_entry[r["model_b"]["name"]]) for r in staged["matches"]]
    assert [r["model_b"]["name"] for r in staged["matches"]] == [n for n in by_entry if n not in {e["entry"] for e in staged["ruled_out"]}]
    assert staged["ruled_out"] and not any(is_derived(by_entry[e["entry"]]["verdict"]) for e in staged["ruled_out"])
    assert staged["placement"] == exhaustive["placement"]


def test_a_sibling_that_shares_nothing_with_the_suspect_is_reached_through_the_parent(compact, family):
    """The redrawn child kept the body, the width-pruned one the embedding (less a quarter of
    its dims): their own fingerprints share nothing, yet they are siblings. The exact stage
    finds the base derived, and the base links the first pass to the other child."""
    staged = identification.identify(family["redrawn"], compact, OPTIONS, CPU, load_reference(None))
    exhaustive = identification.identify(family["redrawn"], compact, OPTIONS, CPU, load_reference(None), exhaustive=True)
    linked = [r for r in staged["matches"] if "via" in r["first_pass"]]
    assert linked and all(not r["first_pass"]["embedding"] or r["first_pass"]["embedding"] < fingerprint.EMBEDDING_INHERITED
                          for r in linked)
    assert all(r["first_pass"]["via"] in {m["model_b"]["name"] for m in staged["matches"] if is_derived(m["verdict"])} for r in linked)
    derived = lambda result: sorted(r["model_b"]["name"] for r in result["matches"] if is_derived(r["verdict"]))
    assert derived(staged) == derived(exhaustive)
    by_entry = {r["model_b"]["name"]: comparable(r) for r in exhaustive["matches"]}
    assert all(comparable(r) == by_entry[r["model_b"]["name"]] for r in staged["matches"])
    assert staged["ruled_out"] and not any(is_derived(next(r for r in exhaustive["matches"] if r["model_b"]["name"] == e["entry"])["verdict"])
                                           for e in staged["ruled_out"])
    assert f"({len(linked)} through a relative found derived)" in "\n".join(identify_lines(staged))


def test_an_exact_entry_with_a_broken_fingerprint_is_not_compared_in_two_stages_and_scored_exhaustively(family, tmp_path):
    directory = build(tmp_path / "lib", family, ("tuned", "other-1"), exact=True)
    with open(os.path.join(directory, "tuned", library_entry.FINGERPRINT_FILE), "r+b") as broken:
        broken.truncate(100)
    staged = identification.identify(family["base"], directory, OPTIONS, CPU, load_reference(None))
    assert [e["entry"] for e in staged["not_compared"]] == ["tuned"] and "truncated" in staged["not_compared"][0]["reason"]
    exhaustive = identification.identify(family["base"], directory, OPTIONS, CPU, load_reference(None), exhaustive=True)
    assert {r["model_b"]["name"]: is_derived(r["verdict"]) for r in exhaustive["matches"]} == {"tuned": True, "other-1": False}


def test_the_map_scores_only_candidate_pairs_and_draws_the_same_tree(family, tmp_path, capsys):
    directory = build(tmp_path / "lib", family, list(family))
    assert cli.main(["--library", directory, "--map", "--results_dir", str(tmp_path / "staged"), "--device", "cpu", "--quiet"]) == 0
    assert "ruled out by the first pass" in capsys.readouterr().out
    assert cli.main(["--library", directory, "--map", "--exhaustive", "--results_dir", str(tmp_path / "all"), "--device", "cpu", "--quiet"]) == 0
    staged, everything = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("staged", "all"))
    assert staged["complete"] and everything["complete"] and not everything["ruled_out"]
    exact = {frozenset(r["pair"].split(" vs ")): r for r in everything["pairs"]}
    ruled_out = {frozenset(entry["pair"].split(" vs ")) for entry in staged["ruled_out"]}
    assert sorted(r["pair"] for r in staged["pairs"]) == sorted(r["pair"] for pair, r in exact.items() if pair not in ruled_out)
    with_independent = [pair for pair in exact if pair & set(INDEPENDENT)]
    for pair, record in exact.items():
        if "base" in pair and not pair & set(INDEPENDENT):      # parent and child: always scored exactly
            assert pair not in ruled_out and is_derived(record["verdict"]), record["pair"]
    assert not any(is_derived(exact[pair]["verdict"]) for pair in with_independent)
    assert sum(pair in ruled_out for pair in with_independent) > len(with_independent) / 2     # most never reach the exact stage
    assert tree_of(tmp_path / "staged") == tree_of(tmp_path / "all")


def test_a_compact_entry_whose_source_is_gone_is_reported_from_the_first_pass_only(family, tmp_path, capsys):
    moved = tmp_path / "tuned-model"
    shutil.copytree(family["tuned"], moved)
    directory = build(tmp_path / "lib", {"tuned": str(moved), "other-1": family["other-1"]}, ("tuned", "other-1"))
    shutil.rmtree(moved)
    assert cli.main(["--library", directory, "--identify", family["base"], "--output", str(tmp_path / "out.json"),
                     "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "first pass only: tuned-model: a candidate (" in printed and "source is gone" in printed
    assert "1 entries screened out" in printed
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["matches"] == [] and [e["entry"] for e in result["first_pass_only"]] == ["tuned-model"]
    assert "scores" not in result["first_pass_only"][0] and "verdict" not in result["first_pass_only"][0]


# ----------------------------------------------------------------------------- many models at once
def test_add_takes_a_list_reports_each_model_and_goes_on(family, tmp_path, capsys):
    listing = tmp_path / "bases.txt"
    listing.write_text(f"# bases we know\n{family['base']}\n\n{tmp_path / 'missing'}   # gone\n{family['other-1']}\n")
    directory = str(tmp_path / "lib")
    assert cli.main(["--library", directory, "--add", str(listing), "--device", "cpu", "--quiet"]) == 2
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "3 models: 2 added, 0 up to date, 1 failed"
    assert any("missing: error: " in line and "does not exist" in line for line in printed)
    assert sorted(Library(directory).entries()) == ["base", "other-1"]
    for misplaced in (["--identify", family["base"], "--exact"], ["--add", family["base"], "--exhaustive"]):
        assert cli.main(["--library", directory, *misplaced, "--device", "cpu", "--quiet"]) == 2
        assert "goes with" in capsys.readouterr().err


# ----------------------------------------------------------------------------- published on the Hub
def publish(directory, target):
    """What a team uploads: the library folder without its hidden working folders."""
    shutil.copytree(directory, target, ignore=shutil.ignore_patterns(".*"))
    return str(target)


@pytest.fixture(scope="module")
def mixed(family, tmp_path_factory):
    """A library of compact entries and two exact ones (a derived and an independent model)."""
    directory = build(tmp_path_factory.mktemp("mixed") / "lib", family, [n for n in entries_of(family) if n not in ("tuned", "other-1")])
    return build(directory, family, ("tuned", "other-1"), exact=True)


def test_a_published_library_answers_as_the_local_one_and_fetches_only_what_it_reads(mixed, family, fake_hub, tmp_path, capsys):
    fake_hub.add("team/awm-bases", publish(mixed, tmp_path / "upload"), repo_type="dataset")
    local = identification.identify(family["base"], mixed, OPTIONS, CPU, load_reference(None))
    assert cli.main(["--library", "team/awm-bases", "--identify", family["base"], "--output", str(tmp_path / "remote.json"),
                     "--device", "cpu", "--quiet"]) == 0
    remote = json.loads((tmp_path / "remote.json").read_text())
    assert [comparable(r) for r in remote["matches"]] == [comparable(r) for r in local["matches"]]
    assert remote["ruled_out"] == local["ruled_out"]
    fetched = {file for (repo, file) in fake_hub.sent if repo == "datasets/team/awm-bases"}
    assert "tuned/kernels.safetensors" in fetched                  # an exact candidate: its kernels serve the exact stage
    assert "other-1/kernels.safetensors" not in fetched            # ruled out: never fetched
    assert {f"{n}/{library_entry.FINGERPRINT_FILE}" for n in entries_of(family)} <= fetched
    sent = sum(fake_hub.sent.values())
    assert cli.main(["--library", "hf://datasets/team/awm-bases", "--identify", family["base"], "--device", "cpu", "--quiet"]) == 0
    assert sum(fake_hub.sent.values()) == sent                     # the second time, everything is in the cache
    assert "best match: " in capsys.readouterr().out
    assert cli.main(["--library", "team/awm-bases", "--add", family["base"], "--device", "cpu", "--quiet"]) == 2
    assert "read-only" in capsys.readouterr().err


def test_a_published_library_with_bad_entries_says_why_per_entry_and_goes_on(mixed, family, fake_hub, tmp_path, capsys):
    upload = publish(mixed, tmp_path / "upload")
    manifest_path = os.path.join(upload, MANIFEST)
    manifest = json.loads(open(manifest_path).read())
    lines = manifest["entries"]
    lines["rotated"]["files"][library_entry.FINGERPRINT_FILE]["sha256"] = "0" * 64               # a lying checksum
    lines["redrawn"]["files"][library_entry.FINGERPRINT_FILE]["size"] += 1                       # a lying size
    record_path = os.path.join(upload, "weak", library_entry.DIGEST_FILE)                       # another entry format,
    record = json.loads(open(record_path).read())                                               # honestly listed
    record["entry_format"] -= 1
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    lines["weak"]["files"][library_entry.DIGEST_FILE] = file_facts(record_path)
    del lines["other-3"]["files"][library_entry.DIGEST_FILE]                                    # a file the manifest omits
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    fake_hub.add("team/awm-bases", upload, repo_type="dataset")
    fake_hub.faults.append({"kind": "short", "times": 100, "files": f"pruned-depth/{library_entry.FINGERPRINT_FILE}"})
    before = {p: open(os.path.join(mixed, p), "rb").read() for p in (MANIFEST, "tuned/digest.json")}
    assert cli.main(["--library", "team/awm-bases", "--identify", family["base"], "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    reasons = {line.split(": ", 2)[1]: line for line in printed.splitlines() if line.startswith("  not compared: ")}
    assert sorted(reasons) == ["other-3", "pruned-depth", "redrawn", "rotated", "weak"]
    assert "SHA-256 differs from the manifest" in reasons["rotated"]
    assert "the manifest says" in reasons["redrawn"]
    assert "entry format" in reasons["weak"] and "rebuild it with --add" in reasons["weak"]
    assert "not in the library's manifest" in reasons["other-3"]
    assert "transfer failed" in reasons["pruned-depth"]
    assert "best match: " in printed and "tuned" in printed
    cache = os.path.join(str(tmp_path / "hub-cache"), "libraries", "team--awm-bases")
    kept = [os.path.relpath(os.path.join(r, f), cache) for r, _, files in os.walk(cache) for f in files]
    assert not any(k.endswith(("rotated/" + library_entry.FINGERPRINT_FILE, ".unchecked")) or ".part-" in k for k in kept)
    assert before == {p: open(os.path.join(mixed, p), "rb").read() for p in before}


def test_an_entry_built_from_the_hub_is_scored_exactly_from_the_hub(family, fake_hub, tmp_path):
    fake_hub.add("lab/tuned-model", family["tuned"])
    directory = str(tmp_path / "lib")
    library_tasks.add_models(["lab/tuned-model", family["other-1"]], directory, OPTIONS, CPU)
    record = library_entry.read_record(os.path.join(directory, "lab--tuned-model"))
    assert record["source"]["hub_repo"] == "lab/tuned-model" and len(record["source"]["commit"]) == 40
    fake_hub.add("team/awm-bases", publish(directory, tmp_path / "upload"), repo_type="dataset")
    shutil.rmtree(tmp_path / "hub-cache" / "models--lab--tuned-model")          # another machine: nothing cached
    sent_before = fake_hub.weight_bytes_sent("lab/tuned-model")
    result = identification.identify(family["base"], library_folder("team/awm-bases"), OPTIONS, CPU, load_reference(None))
    assert [r["model_b"]["name"] for r in result["matches"]] == ["lab--tuned-model"] and is_derived(result["matches"][0]["verdict"])
    assert fake_hub.weight_bytes_sent("lab/tuned-model") > sent_before     # read again, by byte ranges
    assert [e["entry"] for e in result["ruled_out"]] == ["other-1"]


def test_the_suspects_parent_is_the_closest_entry_of_its_shape_that_kept_its_embedding_too(family, tmp_path):
    """The base and its redrawn child hold the same W_q / W_k, so both are as close to a
    fine-tune of the base; only the base also shares the fine-tune's embedding."""
    directory = build(tmp_path / "lib", family, ("redrawn", "base", "other-1"))
    placement = identification.identify(family["tuned"], directory, OPTIONS, CPU, load_reference(None))["placement"]
    assert [p["name"] for p in placement["parents"]] == ["base"]
    assert {c["name"] for c in placement["derived_from_it"]} <= set(DERIVED)
    rotated = identification.identify(family["rotated"], directory, OPTIONS, CPU, load_reference(None))["placement"]
    assert [(p["name"], p["relation"]) for p in rotated["parents"]] == [("base", "fine-tune")]     # no shared basis: by its scores
    assert "under its alignment" in rotated["parents"][0]["direction"]
