"""The Python API: the same records as the command line, typed; errors as exceptions."""
import json
import os

import factory
import pytest

import awm
from awm import cli


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    factory.make_llama_and_disguised_copy(str(root / "base"), str(root / "copy"))
    factory.make_llama(str(root / "other"), vocab=300, seed=31)
    return root


def without_timings(record):
    return {k: v for k, v in record.items() if k != "timings"}


def test_compare_returns_exactly_the_cli_record(pair, tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert cli.main(["--model_paths", str(pair / "base"), str(pair / "copy"), "--quiet", "--output", str(out)]) == 0
    capsys.readouterr()
    report = awm.compare(pair / "base", pair / "copy", device="cpu")
    assert capsys.readouterr() == ("", "")                       # silent by default
    from_cli = json.loads(out.read_text())
    from_api = json.loads(json.dumps(report.to_dict()))
    assert without_timings(from_api) == without_timings(from_cli)
    assert set(from_api["timings"]) == set(from_cli["timings"])


def test_report_fields_are_typed_with_the_json_names(pair):
    report = awm.compare(str(pair / "base"), str(pair / "copy"), device="cpu")
    assert report.verdict == "derived" and report.scores.final >= 99.9
    assert isinstance(report.scores, awm.Scores) and isinstance(report.layers[0], awm.LayerScores)
    assert report.layers[0].wq == report.to_dict()["layers"][0]["wq"]
    assert report.residual_scores.final is None                  # not needed: the embeddings correspond
    other = awm.compare(str(pair / "base"), str(pair / "other"), device="cpu", paper_only=True)
    assert other.verdict == "independent" and other.scores.qk_circuit is None


def test_bad_input_raises_the_tools_exception_with_the_cli_message(pair, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    with pytest.raises(awm.CheckpointError) as caught:
        awm.compare(str(pair / "base"), missing)
    assert cli.main(["--model_paths", str(pair / "base"), missing, "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {caught.value}"
    assert isinstance(caught.value, awm.AwmError)


def test_unusable_device_is_an_exception_not_an_exit(pair):
    with pytest.raises(awm.DeviceError):
        awm.compare(str(pair / "base"), str(pair / "copy"), device="tpu")


def test_run_suite_returns_what_it_writes(pair, tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"name": "api", "pairs": [
        {"a": str(pair / "base"), "b": str(pair / "copy"), "label": "derived"},
        {"a": str(pair / "base"), "b": str(pair / "other"), "label": "independent"}]}))
    result = awm.run_suite(spec, results_dir=tmp_path / "out", device="cpu")
    written = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [r.verdict for r in result.reports] == [p["verdict"] for p in written["pairs"]] == ["derived", "independent"]
    assert result.verdict_confusion == written["verdict_confusion"] and not result.interrupted


def test_the_wheel_installs_one_import_name_with_every_module(tmp_path):
    """`pip install .` puts exactly the awm package (and its dist-info) into site-packages,
    with every module of the source tree."""
    import glob
    import subprocess
    import sys
    import zipfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), root],
                   check=True, capture_output=True)
    (wheel,) = glob.glob(str(tmp_path / "awm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"awm", f"awm-{awm.__version__}.dist-info"}
    sources = {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "awm", "**", "*.py"), recursive=True)}
    assert sources == {n for n in names if n.endswith(".py")}
