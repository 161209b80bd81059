#!/usr/bin/env bash
# Round three's pilots (issue 21) on one CUDA GPU, by epochs, all at once, plus ferlab's CUDA
# paths end to end. Every pilot is `bench/ensemble.py` (the quick recipe as `ferlab run` runs
# it, one seed, with the shipped model beside it as a second member), so every pilot is scored
# on PublicTest plain and with the recipe's TTA, and PrivateTest is read for the record only.
#
#   bash bench/gpu_pilots.sh RESULTS_DIR [BUDGET_MIN]     # on the GPU machine (about 9 min)
#   SMOKE=1 bash bench/gpu_pilots.sh /tmp/gp              # CPU wiring check: 3 batches each
#   PILOTS="wide98 wide56" SKIP_SMOKE=1 bash bench/gpu_pilots.sh DIR 6   # some pilots only
# (CACHE_DIR: the decoded dataset's folder; TMPDIR: where the work folder goes)
#
# Needs FER2013 at ../shared/datasets/fer2013. Each pilot's epochs are a cap under a time
# budget of BUDGET_MIN minutes (default 5.5), so the whole run ends inside one device command
# whatever the GPU's speed: a pilot that the budget cut short says so (epochs_run in its JSON).
# Pilots (the same epochs as the CPU runs they stand for: 160 = the 60-minute run on the fast
# CPU, 56 = the 20-minute run; three seeds of 56 = 168 epochs, a vote):
#   base160 cutmix160 mixup160 wide98 (widths 32-64-128-256: 1.63x the CPU time of a step, so
#   98 epochs cost what 160 do) s0_56 s1_56 s2_56,
# then vote (the 56-epoch seeds that finished soft-voted, no training) and the CUDA smoke (`ferlab
# run` on the built-in demo, `ferlab evaluate/export/predict --weights default`).
# RESULTS_DIR gets results.jsonl (one JSON per pilot), logs.txt and runs.tar (the trained
# pilots' run folders, checkpoints left out). Exit status 1 if a pilot or the smoke failed.
# Seen on an H200 (2026-12-04): seven pilots sharing the GPU ran about 25 epochs each in 5
# minutes, two about 53 (the host's per-step work paces a net this small): give few pilots at
# once the epochs they stand for, or expect the budget to cut them.
set -u
RES=${1:?usage: bench/gpu_pilots.sh RESULTS_DIR [BUDGET_MIN]}
BUDGET=${2:-5.5}
SMOKE=${SMOKE:-0}
FER=../shared/datasets/fer2013
W=$(mktemp -d "${TMPDIR:-/tmp}/gpu-pilots-XXXX")
mkdir -p "$RES"
PY=${PYTHON:-python3}
T0=$(date +%s)
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$RES/logs.txt" >&2; }
ferlab() { "$PY" -m ferlab.cli "$@"; }

[ -d "$FER" ] || { log "no FER2013 at $FER"; exit 2; }
log "device: $("$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")')"
# The dataset decoded once, before the pilots share its cache.
CACHE=()  # the decoded dataset's folder; default: the config's (~/.cache/ferlab)
[ -n "${CACHE_DIR:-}" ] && CACHE=(--cache-dir "$CACHE_DIR")
"$PY" -c "from ferlab.data.loading import load_dataset as L; L('fer2013:$FER', image_size=48, channels=1${CACHE_DIR:+, cache_dir='$CACHE_DIR'})" \
  >>"$W/decode.log" 2>&1 || { log "decode failed"; tail -20 "$W/decode.log" | tee -a "$RES/logs.txt"; exit 3; }
log "FER2013 decoded"

if [ "$SMOKE" = 1 ]; then
  EXTRA=(--smoke)
  read -r -a PILOTS <<<"${PILOTS:-s0_56 s1_56 s2_56}"
else
  EXTRA=(--budget-min "$(awk "BEGIN {print $BUDGET + 1}")" --reserve-min 1)
  read -r -a PILOTS <<<"${PILOTS:-base160 cutmix160 mixup160 wide98 s0_56 s1_56 s2_56}"
fi
args_of() {
  case $1 in
    base160) echo "--seeds 0 --set train.epochs=160" ;;
    cutmix160) echo "--seeds 0 --set train.epochs=160 --set train.augment.cutmix=0.5" ;;
    mixup160) echo "--seeds 0 --set train.epochs=160 --set train.augment.mixup=0.5" ;;
    wide98) echo "--seeds 0 --set train.epochs=98 --set models.0.kwargs.widths=[32,64,128,256]" ;;
    wide56) echo "--seeds 0 --set train.epochs=56 --set models.0.kwargs.widths=[32,64,128,256]" ;;
    s0_56) echo "--seeds 0 --set train.epochs=56" ;;
    s1_56) echo "--seeds 1 --set train.epochs=56" ;;
    s2_56) echo "--seeds 2 --set train.epochs=56" ;;
    *) return 1 ;;
  esac
}
for p in "${PILOTS[@]}"; do
  args_of "$p" >/dev/null || { log "unknown pilot $p: see the list at the top of $0"; exit 2; }
done
for p in "${PILOTS[@]}"; do
  # shellcheck disable=SC2046
  "$PY" bench/ensemble.py --with default --threads 2 --json --out "$W/$p" "${EXTRA[@]}" "${CACHE[@]}" \
    $(args_of "$p") >"$W/$p.json" 2>"$W/$p.log" &
done
log "pilots started: ${PILOTS[*]}"

# Meanwhile, ferlab's CUDA paths on the demo and the shipped model (each must exit 0).
smoke_rc=0
[ "${SKIP_SMOKE:-0}" = 1 ] || {
  ferlab run --out "$W/demo" --no-progress || smoke_rc=1
  ferlab evaluate --weights default --data "fer2013:$FER" --tta --json >"$W/eval_default.json" || smoke_rc=1
  ferlab export --weights default --out "$W/default.onnx" || smoke_rc=1
  ferlab predict --weights default --detector none --out "$W/pred" --no-progress \
    $(ls "$FER"/test/happy/PrivateTest_* | head -20) || smoke_rc=1
  echo "smoke_rc=$smoke_rc"
} >"$W/smoke.log" 2>&1
[ "${SKIP_SMOKE:-0}" = 1 ] || log "CUDA smoke: $(tail -1 "$W/smoke.log")"
wait
log "pilots done"

run_of() { "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print([m['run_dir'] for m in r['member_runs'] if m['name'].startswith('seed ')][0])" "$1"; }
# The seeds' vote (no training): every 56-epoch seed that finished, if two or more did.
VOTERS=()
for p in s0_56 s1_56 s2_56; do [ -s "$W/$p.json" ] && VOTERS+=(--with "$(run_of "$W/$p.json")"); done
if [ ${#VOTERS[@]} -ge 4 ]; then
  "$PY" bench/ensemble.py --seeds "${VOTERS[@]}" --threads 2 --json --out "$W/vote" "${EXTRA[@]}" "${CACHE[@]}" \
    >"$W/vote.json" 2>"$W/vote.log"
  PILOTS+=(vote)
  log "vote of $((${#VOTERS[@]} / 2)) seeds done"
fi
# The trained pilots' run folders (weights, meta, training logs), to score again elsewhere.
RUNS=()
for p in "${PILOTS[@]}"; do [ -s "$W/$p.json" ] && [ "$p" != vote ] && RUNS+=("$(run_of "$W/$p.json")"); done
[ ${#RUNS[@]} -gt 0 ] && tar -cf "$RES/runs.tar" --exclude='*.ckpt' "${RUNS[@]}" 2>>"$RES/logs.txt"

failed=$smoke_rc
for p in "${PILOTS[@]}"; do
  if [ -s "$W/$p.json" ]; then
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); r['pilot']=sys.argv[2]; print(json.dumps(r))" \
      "$W/$p.json" "$p" >>"$RES/results.jsonl"
  else
    log "pilot $p wrote no result:"; tail -25 "$W/$p.log" | tee -a "$RES/logs.txt" >&2
    failed=1
  fi
  { echo "== $p"; grep -v "^\s*$" "$W/$p.log" | tail -12; } >>"$RES/logs.txt"
done
[ "${SKIP_SMOKE:-0}" = 1 ] || { echo "== smoke"; tail -60 "$W/smoke.log"; echo "== eval_default"; cat "$W/eval_default.json"; } >>"$RES/logs.txt"
log "done in $(($(date +%s) - T0)) s"
exit "$failed"
