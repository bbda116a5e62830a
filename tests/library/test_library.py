"""The fingerprint library: stored digests score exactly as the weights, identify ranks a
suspect against every entry, a family map draws the lineage, interrupted runs resume, bad
entries are reported without harming the rest, and Ray runs give the same answers."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import factory
import pytest
import torch
from test_hub import TOKENS, derived, full_llama_tensors

import awm
from awm import cli
from awm import method as sm
from awm.library import entry as library_entry
from awm.library import folder as library
from awm.library import identification
from awm.library import tasks as library_tasks
from awm.method import embedding_stats
from awm.tree import lineage
from awm.witnesses.verdict import load_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU = torch.device("cpu")
OPTIONS = library_tasks.options()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base, two derived models (one of them the suspect), an independent one, and a
    depth-pruned one (8 layers vs 4: the layer LAP path)."""
    root = tmp_path_factory.mktemp("models")
    base = full_llama_tensors()
    config = factory.llama_config(128, 4, 4, 2, 300, intermediate_size=448)
    deep = full_llama_tensors(layers=8, seed=3)
    paths = {
        "base": factory.write_safetensors_model(str(root / "base"), base, config, TOKENS),
        "tuned": factory.write_safetensors_model(str(root / "tuned"), derived(base), config, TOKENS),
        "suspect": factory.write_safetensors_model(str(root / "suspect"), derived(base, seed=11), config, TOKENS),
        "other": factory.write_safetensors_model(str(root / "other"), full_llama_tensors(seed=7), config, TOKENS),
        "deep": factory.write_safetensors_model(str(root / "deep"), deep, factory.llama_config(128, 8, 4, 2, 300, intermediate_size=448), TOKENS),
    }
    return paths


def without_run_details(record):
    """The pair record as a comparison from the weights writes it: no timings, names, or the
    identify's own fields (which stage decided, the first pass's evidence)."""
    record = json.loads(json.dumps(record))
    for key in ("timings", "stage", "first_pass"):
        record.pop(key, None)
    for side in ("model_a", "model_b"):
        record[side].pop("name", None)
    return record


def build(tmp_path, models, names=("base", "tuned", "other", "deep"), exact=True):
    """A library of exact entries (kernels stored), unless exact=False (compact fingerprints)."""
    directory = str(tmp_path / "lib")
    outcomes = library_tasks.add_models([models[n] for n in names], directory, OPTIONS, CPU, exact=exact)
    assert all("error" not in o for o in outcomes), outcomes
    return directory


# ----------------------------------------------------------------------------- exactness
def test_packed_grams_unpack_bit_for_bit():
    for hidden in (96, 2 * sm.GRAM_BLOCK, 2 * sm.GRAM_BLOCK + 77):
        weight = torch.randn(160, hidden, generator=torch.Generator().manual_seed(hidden))
        kernel = sm.gram(weight)
        packed = library_entry.pack_upper(kernel)
        assert packed.numel() == library_entry.packed_length(hidden) < (hidden * hidden if hidden > 2 * sm.GRAM_BLOCK else hidden * hidden + 1)
        assert torch.equal(library_entry.unpack_upper(packed, hidden), kernel)


def test_identify_scores_equal_scores_from_the_weights(tmp_path, models):
    directory = build(tmp_path, models)
    result = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    by_entry = {r["model_b"]["name"]: r for r in result["matches"]}
    assert set(by_entry) == {"base", "tuned", "other", "deep"} and not result["not_compared"]
    for name in by_entry:
        direct = awm.compare(models["suspect"], models[name], device="cpu").to_dict()
        assert without_run_details(by_entry[name]) == without_run_details(direct), name
    ranked = [r["model_b"]["name"] for r in result["matches"]]
    assert ranked[:2] == ["base", "tuned"] and by_entry["other"]["verdict"] == "independent"


def test_the_python_api_builds_a_library_and_identifies(tmp_path, models):
    outcomes = awm.add_to_library([models["base"], models["other"]], tmp_path / "api-lib", device="cpu")
    assert [o["status"] for o in outcomes] == ["added", "added"]
    ranked, not_compared = awm.identify(models["suspect"], tmp_path / "api-lib", device="cpu")
    assert [r.model_b["name"] for r in ranked] == ["base", "other"] and ranked[0].verdict == "derived" and not not_compared


def test_identify_command_prints_a_ranked_table_and_writes_json(tmp_path, models, capsys):
    directory = build(tmp_path, models, ("base", "other"))
    out = tmp_path / "matches.json"
    assert cli.main(["--library", directory, "--identify", models["suspect"], "--device", "cpu", "--quiet", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.index(" base ") < printed.index(" other ") and "best match: base (derived)" in printed
    saved = json.loads(out.read_text())
    assert [m["model_b"]["name"] for m in saved["matches"]] == ["base", "other"]


def test_the_suspect_digest_is_read_once_for_all_equal_depth_entries(tmp_path, models, monkeypatch):
    directory = build(tmp_path, models)
    reads = {}
    real_layer = library_entry.StoredDigest.layer

    def counted(self, index):
        reads[os.path.basename(self.entry)] = reads.get(os.path.basename(self.entry), 0) + 1
        return real_layer(self, index)

    monkeypatch.setattr(library_entry.StoredDigest, "layer", counted)
    result = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    by_entry = {r["model_b"]["name"]: r for r in result["matches"]}
    passes = lambda name: 1 + (by_entry[name]["residual_scores"]["final"] is not None)   # plain pass, residual pass
    layers = by_entry["base"]["evidence"]["layers_a"]
    equal_depth = [n for n, r in by_entry.items() if r["evidence"]["layers_b"] == layers]
    assert sorted(equal_depth) == ["base", "other", "tuned"]
    # One pass over the suspect for the equal-depth entries (two if one needs residual scores);
    # the depth-pruned entry needs every layer pair and makes passes of its own.
    shared_passes = max(passes(n) for n in equal_depth)
    assert reads["suspect"] == layers * (shared_passes + passes("deep"))
    assert all(reads[n] == layers * passes(n) for n in equal_depth)


def test_the_suspect_principal_axes_are_computed_once_per_batch(tmp_path, models, monkeypatch):
    directory = build(tmp_path, models)
    samples = []
    real_axes = embedding_stats.principal_axes

    def counted(sample, count, **kwargs):
        samples.append(sample.shape)
        return real_axes(sample, count, **kwargs)

    monkeypatch.setattr(embedding_stats, "principal_axes", counted)
    result = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    # One tokenizer for all: the suspect's token sample is the same for every entry.
    assert len(result["matches"]) == 4 and len(samples) == 4 + 1


def test_an_entry_that_fails_mid_pass_is_listed_and_the_others_are_scored(tmp_path, models):
    directory = build(tmp_path, models, ("base", "tuned", "other"))
    kernels = os.path.join(directory, "tuned", library_entry.KERNEL_FILE)
    info = library_entry.files.read_safetensors_header(kernels)["layers.2.key"]
    with open(kernels, "r+b") as handle:                   # a NaN in layer 2: found only when that layer is read
        handle.seek(info.begin)
        handle.write(torch.tensor([float("nan")], dtype=torch.float32).numpy().tobytes())
    result = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    assert [(s["entry"], "layers.2.key" in s["reason"] and "NaN" in s["reason"]) for s in result["not_compared"]] == [("tuned", True)]
    by_entry = {r["model_b"]["name"]: r for r in result["matches"]}
    direct = awm.compare(models["suspect"], models["base"], device="cpu").to_dict()
    assert without_run_details(by_entry["base"]) == without_run_details(direct) and by_entry["base"]["verdict"] == "derived"


# ----------------------------------------------------------------------------- resuming
def test_a_second_identify_reuses_the_suspect_digest_and_every_scored_pair(tmp_path, models, monkeypatch):
    directory = build(tmp_path, models, ("base", "other"))
    first = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(library_tasks, "compare_many", must_not_run)
    monkeypatch.setattr(library_entry, "ModelDigest", must_not_run)
    again = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    assert again["suspect_digest"] == "reused" and again["matches"] == first["matches"]
    assert library_tasks.add_models([models["base"]], directory, OPTIONS, CPU)[0]["status"] == "up to date"


def test_a_changed_source_rebuilds_its_entry(tmp_path, models):
    directory = build(tmp_path, models, ("base",))
    before = library_entry.read_record(os.path.join(directory, "base"))
    weights = os.path.join(models["base"], "model.safetensors")
    stat = os.stat(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    try:
        assert library_tasks.add_models([models["base"]], directory, OPTIONS, CPU)[0]["status"] == "added"
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert library_entry.read_record(os.path.join(directory, "base"))["build_id"] != before["build_id"]


@pytest.fixture(scope="module")
def larger_models(tmp_path_factory):
    """Four models big enough that a suite of their six pairs takes seconds (time to kill it)."""
    root = tmp_path_factory.mktemp("larger")
    tokens = factory.byte_level_tokens(3000, seed=4)
    config = factory.llama_config(512, 8, 8, 2, 3000, intermediate_size=1024)
    base = full_llama_tensors(hidden=512, layers=8, heads=8, kv_heads=2, vocab=3000, intermediate=1024)
    tensors = {"base": base, "tuned": derived(base), "suspect": derived(base, seed=11),
               "other": full_llama_tensors(hidden=512, layers=8, heads=8, kv_heads=2, vocab=3000, intermediate=1024, seed=7)}
    return {n: factory.write_safetensors_model(str(root / n), t, config, tokens) for n, t in tensors.items()}


def suite_file(tmp_path, models):
    path = tmp_path / "suite.json"
    names = ("base", "tuned", "other", "suspect")
    pairs = [[a, b] for i, a in enumerate(names) for b in names[i + 1:]]
    path.write_text(json.dumps({"name": "resume", "models": {n: models[n] for n in names}, "pairs": pairs}))
    return str(path)


def test_a_suite_killed_mid_run_resumes_without_recomputing(tmp_path, larger_models):
    suite, results = suite_file(tmp_path, larger_models), tmp_path / "killed"
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--config", suite, "--results_dir", str(results), "--device", "cpu", "--quiet"]
    running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(os.listdir(results / ".pairs") if (results / ".pairs").is_dir() else []) < 2:
        time.sleep(0.01)
    running.send_signal(signal.SIGKILL)
    running.wait()
    done_before = len(os.listdir(results / ".pairs"))
    assert 2 <= done_before < 6
    assert subprocess.run(command, capture_output=True).returncode == 0
    resumed = json.loads((results / "scores.json").read_text())
    assert resumed["resumed_pairs"] >= done_before and resumed["complete"]
    fresh = awm.run_suite(suite, results_dir=str(tmp_path / "fresh"), device="cpu")
    assert [without_run_details(r) for r in resumed["pairs"]] == [without_run_details(r) for r in fresh.pairs]


def test_an_identify_killed_mid_run_resumes_with_the_stored_suspect_digest(tmp_path, larger_models):
    directory = str(tmp_path / "lib")
    library_tasks.add_models([larger_models[n] for n in ("base", "tuned", "other")], directory, OPTIONS, CPU)
    output = tmp_path / "matches.json"
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--library", directory, "--identify", larger_models["suspect"],
               "--output", str(output), "--device", "cpu", "--quiet"]
    running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    suspect_record = os.path.join(directory, library.SUSPECTS, "suspect", library_entry.DIGEST_FILE)
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.isfile(suspect_record):
        time.sleep(0.01)
    running.send_signal(signal.SIGKILL)                  # the suspect is digested, the pairs are under way
    running.wait()
    assert os.path.isfile(suspect_record) and not output.exists()
    assert subprocess.run(command, capture_output=True).returncode == 0
    resumed = json.loads(output.read_text())
    assert resumed["suspect_digest"] == "reused"
    fresh = identification.identify(larger_models["suspect"], build(tmp_path / "fresh", larger_models, ("base", "tuned", "other")),
                              OPTIONS, CPU, load_reference(None))
    assert [without_run_details(r) for r in resumed["matches"]] == [without_run_details(r) for r in fresh["matches"]]


# ----------------------------------------------------------------------------- bad entries
def test_bad_entries_are_listed_with_their_reason_and_harm_nothing(tmp_path, models, capsys):
    directory = build(tmp_path, models, ("base", "tuned", "other", "deep"))
    with open(os.path.join(directory, "tuned", library_entry.DIGEST_FILE), "w") as handle:
        handle.write("{not json")
    kernels = os.path.join(directory, "other", library_entry.KERNEL_FILE)
    os.truncate(kernels, os.path.getsize(kernels) // 2)
    record_path = os.path.join(directory, "deep", library_entry.DIGEST_FILE)
    record = json.loads(open(record_path).read())
    record.update(version="0.0.1", entry_format=library_entry.ENTRY_FORMAT - 1)
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    untouched = {n: os.path.getsize(os.path.join(directory, "base", n)) for n in os.listdir(os.path.join(directory, "base"))}
    assert cli.main(["--library", directory, "--identify", models["suspect"], "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "not compared: tuned: " in printed and "corrupt (not JSON" in printed
    assert "not compared: other: " in printed and "truncated" in printed
    assert "not compared: deep: " in printed and "built by awm 0.0.1 (entry format" in printed and "rebuild it with --add" in printed
    assert "best match: base (derived)" in printed
    assert untouched == {n: os.path.getsize(os.path.join(directory, "base", n)) for n in os.listdir(os.path.join(directory, "base"))}


def test_an_entry_of_another_version_is_scored_from_its_source_and_a_lost_source_is_said(tmp_path, models):
    source = tmp_path / "base"
    shutil.copytree(models["base"], source)
    directory = build(tmp_path, {"base": str(source)}, ("base",))
    expected = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    record_path = os.path.join(directory, "base", library_entry.DIGEST_FILE)
    record = json.loads(open(record_path).read())
    record["version"] = "0.0.1"                      # same entry format: its fingerprint still serves
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    shutil.rmtree(os.path.join(directory, library.PAIRS))
    again = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    assert [without_run_details(r) for r in again["matches"]] == [without_run_details(r) for r in expected["matches"]]
    shutil.rmtree(os.path.join(directory, library.PAIRS))
    shutil.rmtree(source)                            # now the stored kernels are stale and the model is gone
    lost = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None))
    assert lost["matches"] == [] and [e["entry"] for e in lost["first_pass_only"]] == ["base"]
    reason = lost["first_pass_only"][0]["reason"]
    assert "its kernels are from awm 0.0.1" in reason and "source is gone" in reason
    assert lost["first_pass_only"][0]["first_pass"]["candidate"] and "scores" not in lost["first_pass_only"][0]


def test_not_a_library_and_nothing_to_compare_are_one_line_errors(tmp_path, models, capsys):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    for argv in (["--library", str(stranger), "--identify", models["suspect"]], ["--library", str(stranger), "--add", models["base"]],
                 ["--identify", models["suspect"]]):
        assert cli.main(argv + ["--device", "cpu", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    other_width = tmp_path / "narrow"
    factory.make_llama(str(other_width), hidden=64)
    os.remove(other_width / "tokenizer.json")                            # no vocabulary, another width
    directory = build(tmp_path, {"narrow": str(other_width)}, ("narrow",))
    # Without a vocabulary the first pass cannot rule it out; only the body can align these:
    # it is asked, finds nothing, and the entry is still ranked.
    assert cli.main(["--library", directory, "--identify", models["suspect"], "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "narrow" in out and "inconclusive" in out and "0 entries screened out" in out
    assert "no entry was found derived, but not every one was shown independent (1 inconclusive)" in out
    for name in (library_entry.KERNEL_FILE, library_entry.FINGERPRINT_FILE):   # now nothing can be compared
        os.remove(os.path.join(directory, "narrow", name))
    shutil.rmtree(os.path.join(directory, library.PAIRS))                     # (nor read from an earlier run)
    assert cli.main(["--library", directory, "--identify", models["suspect"], "--device", "cpu", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "not compared: narrow:" in captured.out and "incomplete" in captured.out
    assert "no library entry could be compared" in captured.err


def test_two_processes_adding_to_one_library_at_once(tmp_path, models):
    directory = str(tmp_path / "shared")
    library_tasks.add_models([models["other"]], directory, OPTIONS, CPU)      # the library exists before the race
    command = lambda *paths: [sys.executable, os.path.join(ROOT, "main.py"), "--library", directory, "--add", *paths, "--device", "cpu", "--quiet"]
    racers = [subprocess.Popen(command(models["base"], models["tuned"])), subprocess.Popen(command(models["tuned"], models["base"]))]
    assert [p.wait(timeout=300) for p in racers] == [0, 0]
    assert sorted(n for n in os.listdir(directory) if not n.startswith(".")) == ["awm-library.json", "base", "manifest.json", "other", "tuned"]
    assert not [n for n in os.listdir(directory) if n.startswith((".building", ".retired"))]
    assert sorted(library.Library(directory).manifest()["entries"]) == ["base", "other", "tuned"]    # no line lost in the race
    result = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None), exhaustive=True)
    assert len(result["matches"]) == 3 and not result["not_compared"]


# ----------------------------------------------------------------------------- family map
def test_family_map_draws_the_derived_pairs(tmp_path, models):
    directory = build(tmp_path, models, ("base", "tuned", "other"))
    results = tmp_path / "map"
    assert cli.main(["--library", directory, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    graph = json.loads((results / "lineage.json").read_text())
    assert [(e["a"], e["b"]) for e in graph["edges"]] == [("base", "tuned")] and graph["pairs_compared"] == 3
    assert graph["families"] == [["base", "tuned"], ["other"]]
    assert (results / "lineage.png").stat().st_size > 0
    drawn = [path.name for path in (results / "layers").iterdir()]          # only the pairs the tree links
    assert len(drawn) == 1 and "base" in drawn[0] and "tuned" in drawn[0]


def test_a_map_from_kept_layers_scores_as_one_that_reads_them_again(tmp_path, models, monkeypatch):
    """Compact entries' layer kernels kept across batches (awm.comparison.digest.LayerStore) change no
    number: the map with nothing kept and the map with every entry kept agree bit for bit."""
    from awm.comparison.digest import LayerStore

    directory = build(tmp_path, models, ("base", "tuned", "other", "deep"), exact=False)
    maps = {}
    for budget in (0, 1 << 30):
        store = LayerStore(budget)
        monkeypatch.setattr(library, "_LAYER_STORE", store)
        shutil.rmtree(os.path.join(directory, ".pairs"), ignore_errors=True)
        results = tmp_path / f"map-{budget}"
        assert cli.main(["--library", directory, "--map", "--exhaustive", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
        maps[budget] = json.loads((results / "scores.json").read_text())["pairs"]
        assert len(store.models) == (0 if budget == 0 else 4)
    untimed = [[{k: v for k, v in p.items() if k != "timings"} for p in pairs] for pairs in maps.values()]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 6


def test_families_are_connected_groups():
    edges = [{"a": "a", "b": "b"}, {"a": "c", "b": "b"}, {"a": "d", "b": "e"}]
    assert lineage.families(list("abcdef"), edges) == [["a", "b", "c"], ["d", "e"], ["f"]]


# ----------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def local_ray():
    from awm import executors

    ray = executors.connect_ray()
    yield ray
    ray.shutdown()


def crash_once(marker):
    """A task whose first worker dies abruptly (as when killed); the retry finds the marker."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "survived"


def test_ray_retries_a_task_whose_worker_died(local_ray, tmp_path):
    from awm import executors

    local_ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    assert executors.run_all(crash_once, [str(tmp_path / "marker")], "ray") == ["survived"]


def test_a_ray_suite_scores_as_the_local_one_digesting_each_model_once(local_ray, tmp_path, models):
    suite = suite_file(tmp_path, models)
    on_ray = awm.run_suite(suite, results_dir=str(tmp_path / "ray"), device="cpu", executor="ray")
    local = awm.run_suite(suite, results_dir=str(tmp_path / "local"), device="cpu")
    assert [without_run_details(r) for r in on_ray.pairs] == [without_run_details(r) for r in local.pairs]
    reads = json.loads((tmp_path / "ray" / "scores.json").read_text())["model_reads"]
    assert sorted(reads.values()) == [1, 1, 1, 1]
    again = awm.run_suite(suite, results_dir=str(tmp_path / "ray"), device="cpu", executor="ray")   # all stored: nothing rebuilt
    assert json.loads((tmp_path / "ray" / "scores.json").read_text())["model_reads"] == {}
    assert [without_run_details(r) for r in again.pairs] == [without_run_details(r) for r in local.pairs]


def test_a_ray_identify_splits_the_entries_over_the_workers_and_scores_as_the_local_one(local_ray, tmp_path, models):
    directory = build(tmp_path, models)
    from awm import executors

    jobs = library_tasks.batch_jobs(directory, ("suspect", True), ["base", "deep", "other", "tuned"], OPTIONS, "cpu", None, "ray", False)
    size = -(-4 // executors.workers("ray"))                      # one batch per CPU (2 here) run at once
    assert [job[2] for job in jobs] == [["base", "deep", "other", "tuned"][i:i + size] for i in range(0, 4, size)]
    on_ray = identification.identify(models["suspect"], directory, OPTIONS, CPU, load_reference(None), executor="ray")
    local = identification.identify(models["suspect"], build(tmp_path / "local", models), OPTIONS, CPU, load_reference(None))
    assert [without_run_details(r) for r in on_ray["matches"]] == [without_run_details(r) for r in local["matches"]]

