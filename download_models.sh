#!/usr/bin/env bash
# Download the models of an awm suite into the checkpoint directory that main.py reads.
#
#   ./download_models.sh                      list the suites
#   ./download_models.sh cpt_pairs            fetch what cpt_pairs needs and is not there yet
#   ./download_models.sh all --checkpoint_dir /data/ckpt
#
# Folder: --checkpoint_dir, else $AWM_CHECKPOINT_DIR, else ./checkpoints next to this script.
# Needs the Hugging Face CLI (`hf`, or the older `huggingface-cli`); downloads resume.
# Gated models (Llama, Gemma, Mistral...) need their license accepted on the Hub and a token:
# `hf auth login` or HF_TOKEN=...
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
plan() { PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" -m awm.suites.download_command "$@"; }

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "usage: ./download_models.sh SUITE|all [--checkpoint_dir DIR]"
  plan list
  exit 0
fi
suite="$1"; shift
extra=("$@")

if command -v hf >/dev/null 2>&1; then
  fetch() { hf download "$@"; }
elif command -v huggingface-cli >/dev/null 2>&1; then
  fetch() { huggingface-cli download "$@"; }
else
  fetch() { echo "no Hugging Face CLI: pip install -U huggingface_hub" >&2; return 127; }
fi

todo="$(plan missing "$suite" "${extra[@]}")" || exit $?
if [ -z "$todo" ]; then
  echo "$suite: every model is already in place"
  exit 0
fi
failed=0
while IFS=$'\t' read -r name repo folder; do
  echo "== $name  <-  $repo"
  if ! files="$(plan files "$repo")"; then
    failed=$((failed + 1)); continue
  fi
  mapfile -t names <<< "$files"
  log="$(mktemp)"
  if ! fetch "$repo" "${names[@]}" --local-dir "$folder" 2>&1 | tee "$log"; then :; fi
  if grep -qiE "gated|401|403|restricted|awaiting a review|Access to model" "$log"; then
    echo "   $repo is gated: accept its license at https://huggingface.co/$repo, then run 'hf auth login' (or set HF_TOKEN) and rerun" >&2
    failed=$((failed + 1))
  elif ! plan complete "$folder"; then
    echo "   $name is incomplete after the download; rerun to resume" >&2
    failed=$((failed + 1))
  fi
  rm -f "$log"
done <<< "$todo"
[ "$failed" -eq 0 ] || { echo "$failed model(s) not downloaded" >&2; exit 1; }
