"""What people read: the console text of a pair, an identify ranking and a suite run.

Only formatting: the command line prints these lines.
"""
from collections import Counter

from awm.witnesses.verdict import NO_EVIDENCE, UNKNOWN, is_derived


def _fmt(value, unit=" %"):
    return "undefined" if value is None else f"{value:7.2f}{unit}"


def _describe(meta):
    adapter = meta.get("adapter")
    merged = f", LoRA adapter (r={adapter['rank']}, alpha={adapter['lora_alpha']}) merged into {adapter['base']}" if adapter else ""
    return (f"{meta['architecture']}, hidden {meta['hidden_size']}, {meta['num_layers']} layers, "
            f"{meta['num_heads']}/{meta['num_kv_heads']} heads, vocab {meta['vocab_size']:,}, {meta['dtype']}{merged}")


def _bytes(count):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000


def _source_lines(meta):
    """For a Hub model: the commit read and how little of the repo it took."""
    source = meta.get("source")
    if not source:
        return []
    share = source["needed_bytes"] / source["repo_bytes"] if source["repo_bytes"] else 0
    return [f"   from the Hub: {source['hub_repo']} @ {source['revision']} = commit {source['commit'][:12]}; "
            f"read {_bytes(source['needed_bytes'])} of the repo's {_bytes(source['repo_bytes'])} ({100 * share:.1f} %), "
            + (f"{_bytes(source['fetched_bytes'])} transferred this run" if source["fetched_bytes"] else "all from the cache")]


def _residual_line(residual):
    if residual["final"] is None and residual["qk_circuit"] is None:
        return "not computed (only needed when the embeddings show no correspondence and a score is high)"
    return (f"AWM {_fmt(residual['final'])}   QK circuit {_fmt(residual['qk_circuit'])}"
            "   (the embeddings' common directions projected out)")


def _correspondence_line(test):
    if test is None:
        return "not tested (no shared vocabulary)"
    return (f"{test['matched_dims']}/{test['target_dims']} dims match one to one beyond shared directions "
            f"(p {'<=' if test['matched_dims'] else '='} {test['p_value']:.2g}; median {test['median_matched_sigmas']:.1f} sigma)")


def _agreement(witness):
    return "" if witness.get("agreement") is None else f", agreement {witness['agreement']:.2f}"


def _witness_line(alignment, aligned, reference):
    """Which alignment the verdict rests on, and the null its scores are judged against."""
    basis = alignment["basis"]
    if basis is None:
        tried = "; ".join(f"{w['witness']} p = {w['p_value']:.2g}{_agreement(w)}" if "p_value" in w else w["witness"]
                          for w in alignment["witnesses"]) or "none testable"
        return f"no alignment passed its held-out test ({tried}; a pass needs p <= 0.001 and the agreement inheritance leaves)"
    witness = next(w for w in alignment["witnesses"] if w["witness"] == basis)
    line = (f"rests on the {basis}: {witness['matched_dims']}/{witness['target_dims']} dims confirmed on held-out "
            f"{'layers' if basis.startswith('body') else 'tokens'} (p <= {witness['p_value']:.2g}{_agreement(witness)})")
    if basis != "embedding permutation":
        z = aligned.get("z_score")
        line += (f"; under it AWM {_fmt(aligned['final'])} (|Z| = {'n/a' if z is None else f'{z:.1f}'} against the "
                 f"{reference['name']} null, mean {reference['mean']:.2f} %, std {reference['std']:.2f} %), QK circuit {_fmt(aligned['qk_circuit'])}")
    return line


def _body_weights_line(test):
    found = (f"{test['matched_rows']}/{test['rows']} W_q / W_k rows recognisable on {len(test['layers'])} layers "
             f"(p {'<=' if test['matched_rows'] else '='} {test['p_value']:.2g})")
    if test["confirmed"]:
        return f"{found}: the body's weights were inherited"
    if test["decisive"]:
        return f"{found}: the body's weights are not the other model's"
    return f"{found}: too weak to tell at this width and score (an inherited row would stand {test['expected_sigmas']:.1f} sigma out)"


def _spectra_line(spectra):
    found = (f"QK-circuit singular values differ by {spectra['distance']:.4f} on {spectra['layers']} matched layers "
             f"({spectra['contrast']:.3f} of the difference out of order)")
    if spectra["confirmed"]:
        return f"{found}: the same body under another residual basis"
    return f"{found}: not a copy's (a copy stays within {spectra['copy_distance']} and {spectra['max_contrast']})"


def summary_lines(report):
    """The human summary of one pair: scores first, then the evidence behind them."""
    ev, sc, ref = report["evidence"], report["scores"], report["reference"]
    base = "A" if ev["base_model"] == "a" else "B"
    if ev["layer_map"] is None:
        depth = f"{ev['layers_a']} vs {ev['layers_b']} (layer i with layer i)"
    else:
        depth = f"{ev['layers_a']} vs {ev['layers_b']}, matched by LAP: " + " ".join(f"{a}-{b}" for a, b in ev["layer_map"])
    alignment = (f"{ev['shared_tokens']:,} shared tokens, base {base}, {ev['matched_hidden_dims']}/{ev['base_hidden_dims']} "
                 f"dims matched, {ev['sign_flips']} sign flips, mean |cos| {ev['mean_abs_cosine']:.3f}"
                 if ev["aligned"] else "UNALIGNED (dims compared in stored order)")
    z = sc["z_score"]
    lines = [
        f"A  {report['model_a']['path']}",
        f"   {_describe(report['model_a'])}",
        *_source_lines(report["model_a"]),
        f"B  {report['model_b']['path']}",
        f"   {_describe(report['model_b'])}",
        *_source_lines(report["model_b"]),
        f"  alignment          {alignment}",
        f"  layers             {depth}",
        f"  Wq similarity      {_fmt(sc['wq'])}",
        f"  Wk similarity      {_fmt(sc['wk'])}",
        f"  AWM score (Wq*Wk)  {_fmt(sc['final'])}   |Z| = {'n/a' if z is None else f'{z:.1f}'} against {ref['name']} "
        f"independent pairs (mean {ref['mean']:.3f} %, std {ref['std']:.3f} %)",
        f"  QK-circuit score   {_fmt(sc['qk_circuit'])}   (disguise-robust: norm-gain folding, RoPE-pair scaling)",
        f"  correspondence     {_correspondence_line(ev.get('correspondence'))}",
        f"  without shared     {_residual_line(report['residual_scores'])}",
        f"  witness            {_witness_line(ev['alignment'], report['aligned_scores'], report.get('verdict_reference', ref))}",
        *([f"  body weights       {_body_weights_line(ev['body_weights'])}"] if ev.get("body_weights") else []),
        *([f"  circuit spectra    {_spectra_line(ev['circuit_spectra'])}"] if ev.get("circuit_spectra") else []),
        f"  inherited          {_inheritance_line(report['inheritance'])}",
        f"  verdict            {report['verdict'].upper()}: {report['verdict_reason']}",
        f"  computed           {_computed_line(report.get('timings') or {})}",
    ]
    lines += [f"  note               {note}" for note in ev["notes"]]
    return lines


def _inheritance_line(inheritance):
    line = f"embedding {inheritance['embedding']}, transformer body {inheritance['body']}"
    return line + (" (unknown: no test able to see it ran)" if UNKNOWN in inheritance.values() else "")


PRODUCT_WORDS = {"exact": "float32 products", "fast": "bfloat16 products, CKAs within ~1e-3 pp of exact"}


def _computed_line(timings):
    precision = timings.get("precision", "exact")
    total = f", {timings['total_s']:.1f} s" if "total_s" in timings else ""
    return f"{precision} ({PRODUCT_WORDS.get(precision, precision)}) on {timings.get('device', '?')}{total}"


def _percent(value):
    return "      n/a" if value is None else f"{value:8.2f} %"


def verdict_scores(record):
    """The scores the verdict read: under the witness it rests on (the paper's when that is the
    embedding's pairing, or when no witness passed)."""
    return record.get("aligned_scores") or record["scores"]


def _placement_lines(placement):
    lines = []
    for parent in placement.get("parents", ()):
        weight = f", weight {parent['weight']:.3f}" if parent["weight"] is not None else \
            f", density {parent['density']:.2f}" if parent.get("density") is not None else ""
        lines.append(f"  parent: {parent['name']} ({parent['relation']}{weight}): {parent['direction']}")
    for child in placement.get("derived_from_it", ()):
        lines.append(f"  derived from it: {child['name']} ({child['relation']}): {child['direction']}")
    return lines


def identify_lines(result):
    screened = len(result["matches"]) + len(result.get("ruled_out", ())) + len(result.get("first_pass_only", ()))
    lines = [f"suspect {result['suspect']} against {screened + len(result['not_compared'])} entries of {result['library']}"]
    if result.get("ruled_out") is not None:
        linked = sum("via" in (r.get("first_pass") or {}) for r in result["matches"] + result.get("first_pass_only", []))
        through = f" ({linked} through a relative found derived)" if linked else ""
        lines.append(f"  first pass: {len(result['ruled_out'])} entries screened out (no exact score, no verdict), "
                     f"{len(result['matches']) + len(result.get('first_pass_only', ()))} to the exact stage{through}")
    if result["matches"]:
        lines.append(f"  {'rank':>4}  {'entry':40s} {'AWM':>10} {'QK-circuit':>10}  {'dims confirmed':>15}  verdict"
                     "   (exact scores, under the alignment each verdict rests on)")
    for rank, record in enumerate(result["matches"], 1):
        witness = next((w for w in record["evidence"]["alignment"]["witnesses"] if w["witness"] == record["evidence"]["alignment"]["basis"]), None)
        confirmed = f"{witness['matched_dims']}/{witness['target_dims']}" if witness else "none"
        scores = verdict_scores(record)
        lines.append(f"  {rank:>4}  {record['model_b']['name'][:40]:40s} {_percent(scores['final'])} "
                     f"{_percent(scores['qk_circuit'])}  {confirmed:>15}  {record['verdict']}")
    derived = [r for r in result["matches"] if is_derived(r["verdict"])]
    if derived:
        lines.append(f"  best match: {derived[0]['model_b']['name']} ({derived[0]['verdict']})")
    elif any(r["verdict"] != "independent" for r in result["matches"]):
        left = Counter(r["verdict"] for r in result["matches"] if r["verdict"] != "independent")
        lines.append("  no entry was found derived, but not every one was shown independent ("
                     + ", ".join(f"{n} {call}" for call, n in left.items()) + f"): each reason says why"
                     + (f"; '{NO_EVIDENCE}' names what no witness could see" if NO_EVIDENCE in left else ""))
    elif screened:
        lines.append("  no entry is an ancestor or sibling: the suspect matches nothing in the library")
    lines += _placement_lines(result.get("placement") or {})
    for entry in result.get("first_pass_only", ()):
        lines.append(f"  first pass only: {entry['entry']}: a candidate ({entry['first_pass']['why']}), "
                     f"no exact score: {entry['reason']}")
    for skipped in result["not_compared"]:
        lines.append(f"  not compared: {skipped['entry']}: {skipped['reason']}")
    return lines


def suite_lines(run, confusion, by_difficulty=None):
    """A run of many pairs: one line per pair, then skips, ROC metrics, the verdicts' confusion
    and, for a benchmark's pairs, the share of right verdicts per difficulty."""
    resumed = f" ({run.resumed} from an earlier run)" if run.resumed else ""
    ruled_out = f", {len(run.ruled_out)} ruled out by the first pass" if run.ruled_out else ""
    left_out = f" ({len(run.left_out)} more left out: awm cannot score them, reasons in table.md)" if run.left_out else ""
    lines = [f"{run.name}: {len(run.records)} of {len(run.pairs)} pairs scored{resumed}{ruled_out}, {len(run.skipped)} skipped{left_out} -> {run.results_dir}"]
    for record in run.records:
        s = record["scores"]
        circuit = "n/a" if s["qk_circuit"] is None else f"{s['qk_circuit']:7.2f} %"
        lines.append(f"  {record['pair']:60s} {s['final']:7.2f} %  |Z| {s['z_score']:7.1f}  QK-circuit {circuit}  {record['verdict']}")
    lines += [f"  skipped {skipped['pair']}: {skipped['reason']}" for skipped in run.skipped]
    for key, m in run.metrics().items():
        lines.append(f"  {'AWM' if key == 'final' else 'QK-circuit'}: AUC {m['auc']:.3f}  pAUC {m['pauc']:.3f}  TPR@1%FPR {m['tpr_at_fpr']:.3f}")
    if confusion["false_positive_rate"] is not None or confusion["true_positive_rate"] is not None:
        counts = lambda label: ", ".join(f"{n} {call}" for call, n in confusion["counts"][label].items() if n)
        lines.append(f"  verdicts: derived pairs -> {counts('derived') or 'none'}; independent pairs -> {counts('independent') or 'none'}")
    if by_difficulty:
        lines.append("  right by difficulty: " + ", ".join(f"{value} {g['accuracy']:.2f} ({g['derived'] + g['independent']} pairs)"
                                                          for value, g in by_difficulty.items()))
    return lines


def add_lines(outcomes):
    """One line per model, then the counts."""
    lines = [f"  {o['reference']}: " + (f"error: {o['error']}" if "error" in o else f"{o['status']} as '{o['name']}'") for o in outcomes]
    counts = {status: sum(o.get("status", "failed") == status for o in outcomes) for status in ("added", "up to date", "failed")}
    return lines + [f"{len(outcomes)} models: " + ", ".join(f"{n} {status}" for status, n in counts.items())]


def demo_lines(original_path, results):
    """The demo: each suspect's scores against the original, and what they mean."""
    lines = [f"  original           {original_path}"]
    for label, path, meaning, record in results:
        scores, test = record["scores"], record["evidence"]["correspondence"]
        lines += [f"\n  ({label}) {meaning}\n      {path}",
                  f"      AWM score {scores['final']:7.2f} %   |Z| {scores['z_score']:6.1f}   "
                  f"QK-circuit {scores['qk_circuit']:7.2f} %   dims matched {test['matched_dims']}/{test['target_dims']}"
                  f"   -> {record['verdict'].upper()}"]
    lines.append("\n  Derived copies score far above the independent-pair reference (0.375 % +- 0.28 %) and their"
                 "\n  embedding dims correspond one to one; the independent model stays near zero with no dim"
                 "\n  matched. Only the QK-circuit score survives the heavy disguise.")
    return lines
