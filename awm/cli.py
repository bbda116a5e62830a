"""The command line: `python main.py ...` in a checkout, `awm ...` once installed.

Run with --help for the options and examples. This is the one module that prints.
"""
import argparse
import os
import sys

from awm import console
from awm.atomic import write_json_atomic
from awm.devices import resolve_device, set_threads
from awm.errors import AwmError
from awm.executors import EXECUTORS
from awm.readers.vocabulary import VOCAB_MATCHES
from awm.witnesses.verdict import load_reference

HELP_EPILOG = """\
what the score means:
  AWM aligns the two models' hidden dimensions on their shared vocabulary (a linear
  assignment on embedding-column cosines), then compares every layer's W_q and W_k with
  unbiased linear CKA. The AWM score is mean(CKA W_q, CKA W_k) over layers, in percent.
  Independently trained models score ~0 (paper: mean 0.375 %, std 0.28 %); fine-tunes
  score ~100 %; continued pre-training, pruning and upcycling fall in between, and even the
  hardest derived pair in the paper (Llama-3.2-1B vs Llama-3.1-8B) scores ~3.8 %, a |Z| of ~12.
  The QK-circuit score compares what attention computes (sum over heads of W_q^T W_k with
  norm gains folded in); it survives disguises that break the paper's score.

what the verdict means:
  derived / derived (disguised) needs two things: the embeddings' hidden dims correspond
  one to one beyond the directions all columns share (a test on held-out tokens, p <= 1e-3),
  and a score 6 sigma above independent pairs. Without the correspondence, high scores are
  what anisotropic embeddings give unrelated models: "independent" when the scores without
  those shared directions are at the null and every derivation the models' depths allow was
  looked for by a witness able to see it, "no evidence of derivation" when one was not (the
  reason names it: models of different depth, for one), else "inconclusive". "inconclusive" is
  also the answer when the embedding is inherited but the attention weights are not.

from the Hub:
  A repo id fetches only config.json, the tokenizer, the weight files' headers and the
  tensors the score reads (about 15 % of a dense model), cached in $AWM_HUB_CACHE (default
  $HF_HOME/awm). Gated repos: `hf auth login` or HF_TOKEN. HF_ENDPOINT and HF_HUB_OFFLINE
  work as for every Hugging Face tool.

a fingerprint library:
  --add stores each model's compact fingerprint (anchor tokens' embedding rows, as geometry
  and as columns, and every layer's singular-value spectra: a few MB, far under 1 % of the
  model) and where the model came from. --identify digests the suspect once; a first pass
  over the fingerprints (milliseconds per entry) rules out the entries that share less with
  it than inheritance leaves, and the rest are scored exactly, from the entry's source (local files, or the Hub by byte
  ranges) or, for entries added with --exact, from their stored kernels: the final scores and
  verdicts are the exact comparison's. --map does the same over every pair and draws the
  family tree. A library folder can be published as a Hub dataset repo and used as
  --library owner/name. Runs killed at any point resume.

examples:
  python main.py --demo
  python main.py --model_paths meta-llama/Llama-3.1-8B allenai/Llama-3.1-Tulu-3-8B
  python main.py --model_paths Qwen/Qwen2.5-7B@main hf://someone/suspect-GGUF/suspect.Q8_0.gguf
  python main.py --config sft_pairs --hub
  python main.py --library lib/ --add checkpoints/Llama-2-7b-hf mistralai/Mistral-7B-v0.1
  python main.py --library lib/ --add bases.txt --exact
  python main.py --library lib/ --identify someone/suspect-7b --output matches.json
  python main.py --library someone/awm-reference-bases --identify suspect_dir/
  python main.py --library lib/ --map --executor ray
  python main.py --model_paths checkpoints/Llama-2-7b-hf checkpoints/vicuna-7b-v1.5
  python main.py --model_paths model.gguf other_model_dir --output report.json
  python main.py --config sft_pairs independent_pairs --results_dir results/roc
  python main.py --config my_pairs.json --device cuda
"""


def build_parser():
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "awm"
    parser = argparse.ArgumentParser(
        prog="python main.py" if invoked.endswith(".py") else invoked, description="AWM weight-matrix fingerprint: is model B derived from model A?",
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model_paths", nargs=2, metavar=("A", "B"),
                      help="two models: Hugging Face directories (safetensors or .bin), .gguf files, or Hub repos "
                           "(owner/name[@revision] or hf://owner/name[@revision][/file.gguf]; a local path of that "
                           "name wins), of which only the bytes the score reads are fetched")
    what.add_argument("--config", nargs="+", metavar="SUITE",
                      help="one or more built-in suites (see --list_suites) or a JSON/YAML suite file")
    what.add_argument("--demo", action="store_true",
                      help="compare the real SmolLM2-135M GGUF with a disguised copy and an independent model")
    what.add_argument("--list_suites", action="store_true", help="list the built-in suites and exit")
    what.add_argument("--add", nargs="+", metavar="MODEL",
                      help="fingerprint models (folders, .gguf files, Hub repos, or a .txt file listing one per line) "
                           "into the library --library DIR")
    what.add_argument("--identify", metavar="SUSPECT",
                      help="score a suspect against every entry of --library DIR: a ranked table, best match first")
    what.add_argument("--map", action="store_true",
                      help="every pair of --library DIR's entries: N x N scores, heatmap, lineage.png / lineage.json")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the math runs; auto picks CUDA when available (default: auto)")
    parser.add_argument("--output", metavar="FILE", help="write the pair's full report (per-layer scores, metadata) as JSON")
    parser.add_argument("--results_dir", metavar="DIR", help="suite outputs (default: results/<suite>)")
    parser.add_argument("--checkpoint_dir", metavar="DIR",
                        help="where suite models live (default: $AWM_CHECKPOINT_DIR, else checkpoints/ beside main.py)")
    parser.add_argument("--library", metavar="DIR",
                        help="a fingerprint library: a folder (created by --add), or one published as a Hub dataset repo "
                             "(owner/name or hf://datasets/owner/name[@revision]: manifest first, entries fetched as needed)")
    parser.add_argument("--exact", action="store_true",
                        help="--add: store each entry's exact digest too (kernels, about 1/3 of a dense model's bytes), "
                             "so the exact stage never reads the model again")
    parser.add_argument("--exhaustive", action="store_true",
                        help="--identify, --map: skip the first pass and score every entry (pair) exactly")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="run digests and pairs in this process (default) or as Ray tasks ($RAY_ADDRESS, else a local "
                             "Ray; pip install -r requirements-ray.txt); suites, --add, --identify, --map")
    parser.add_argument("--hub", action="store_true",
                        help="suites: read models missing from the checkpoint folder straight from the Hub (their repo ids "
                             "in --list_suites), fetching only the bytes the score reads")
    parser.add_argument("--null_stats", metavar="FILE",
                        help="JSON with mean/std (percent) of your own independent pairs, for the Z-score")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: all cores)")
    parser.add_argument("--cache_gb", type=float, default=None, metavar="GB",
                        help="memory for per-model layer kernels reused across a suite's pairs (default: 40%% of RAM)")
    parser.add_argument("--paper_only", action="store_true",
                        help="skip the QK-circuit score: only the paper's products, about 40%% less CPU time")
    parser.add_argument("--vocab_match", choices=VOCAB_MATCHES, default="bytes",
                        help="shared tokens: those standing for the same bytes (default; 'Ġthe' = '▁the'), or "
                             "identical vocabulary spellings, as the published implementation does (its exact numbers)")
    parser.add_argument("--precision", choices=("exact", "fast"), default="exact",
                        help="the per-layer products: float32 (default), or bfloat16, about 2x faster on CPUs with "
                             "AVX512-BF16/AMX, moving per-layer CKAs by up to ~1e-3 percentage points (docs/performance.md)")
    parser.add_argument("--adapter_base", metavar="BASE",
                        help="with --model_paths: the model a LoRA adapter folder is merged into "
                             "(default: the base_model_name_or_path its adapter_config.json names)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def run_pair(args, device, null):
    from awm.api import compare_record

    record = compare_record(*args.model_paths, device=device, null=null, paper_only=args.paper_only,
                            vocab_match=args.vocab_match, progress=not args.quiet, precision=args.precision,
                            adapter_base=args.adapter_base)
    print("\n".join(console.summary_lines(record)))
    if args.output:
        write_json_atomic(args.output, record)
        print(f"  report             {os.path.abspath(args.output)}")
    return 0


def run_demo(args, device, null):
    from awm import demo

    print(f"AWM demo: SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI package {demo.PACKAGE}")
    print("\n".join(console.demo_lines(*demo.run(device, progress=not args.quiet))))
    return 0


def _library_options(args):
    from awm.library.tasks import options

    return options(not args.paper_only, args.vocab_match, args.precision)


def print_run(run, interrupted):
    from awm.suites import evaluation

    print("\n".join(console.suite_lines(run, evaluation.verdict_confusion(run.records), run.verdicts_by_difficulty())))
    if interrupted:
        print("interrupted: finished pairs are saved")
        return 130
    return 0 if run.records else 1


def run_suites(args, device, null):
    from awm.suites import run as suite_run

    run, interrupted = suite_run.run_suite(args.config, device, null, _library_options(args), args.results_dir,
                                           args.checkpoint_dir, args.cache_gb, not args.quiet, args.hub, args.executor,
                                           args.library)
    return print_run(run, interrupted)


def run_library(args, device, null):
    """--add, --identify and --map over --library DIR."""
    from awm.library.folder import library_folder

    if not args.library:
        raise AwmError("--add, --identify and --map need --library DIR")
    opts, progress = _library_options(args), not args.quiet
    folder = library_folder(args.library, create=bool(args.add))
    if args.add:
        from awm.library.tasks import add_models

        outcomes = add_models(model_references(args.add), folder, opts, device, args.executor, progress, args.exact)
        print("\n".join(console.add_lines(outcomes)))
        return 2 if any("error" in o for o in outcomes) else 0
    if args.identify:
        from awm.library.identification import identify

        result = identify(args.identify, folder, opts, device, null, args.executor, progress, args.exhaustive)
        print("\n".join(console.identify_lines(result)))
        if args.output:
            write_json_atomic(args.output, result)
            print(f"  report  {os.path.abspath(args.output)}")
        if not (result["matches"] or result["ruled_out"] or result["first_pass_only"]):
            raise AwmError(f"{args.identify}: no library entry could be compared (reasons above)")
        return 0
    from awm.suites import run as suite_run

    run, interrupted = suite_run.run_family_map(folder, device, null, args.results_dir, progress, opts, args.executor, args.exhaustive)
    return print_run(run, interrupted)


def model_references(arguments):
    """--add's models: each argument, or for a .txt file, the models it lists one per line
    (blank lines and # comments skipped)."""
    references = []
    for argument in arguments:
        if argument.endswith(".txt") and os.path.isfile(argument):
            try:
                with open(argument, encoding="utf-8") as handle:
                    lines = [line.split("#", 1)[0].strip() for line in handle]
            except (OSError, UnicodeDecodeError) as err:
                raise AwmError(f"{argument}: cannot read the model list ({err.__class__.__name__})") from None
            references += [line for line in lines if line]
        else:
            references.append(argument)
    if not references:
        raise AwmError(f"{' '.join(arguments)}: no models listed")
    return list(dict.fromkeys(references))


def dispatch(args):
    if args.exact and not args.add:
        raise AwmError("--exact goes with --add (it decides what an entry stores)")
    if args.exhaustive and not (args.identify or args.map):
        raise AwmError("--exhaustive goes with --identify or --map")
    if args.list_suites:
        from awm.suites import configs

        print(configs.describe_suites())
        return 0
    set_threads(args.threads)
    device = resolve_device(args.device)
    null = load_reference(args.null_stats)
    if args.demo:
        return run_demo(args, device, null)
    if args.config:
        return run_suites(args, device, null)
    if args.add or args.identify or args.map:
        return run_library(args, device, null)
    return run_pair(args, device, null)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except AwmError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            raise
        print(f"internal error: {err.__class__.__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return 3

