#!/usr/bin/env bash
# The first CUDA machine in one command: the CUDA tests and every GPU row docs/PERFORMANCE.md
# leaves "to measure" (epoch speed, sweep throughput, batched trials, sweep workers), on one GPU,
# in under 8 minutes, written to one markdown file: a table of the steps (status, seconds), then
# each benchmark's own table (its baseline measured in the same run).
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]
#   OUT_DIR    where gpu_check.md and each step's full output go
#              (default: results/gpu_check/<UTC date and time>)
#   --dry-run  print the steps, their time limits and the output folder; run nothing (no GPU needed)
# Exit status: 0 every step passed, 1 a step failed or ran out of time, 2 no CUDA device here.
set -uo pipefail

cd "$(dirname "$0")/.."
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
out=${1:-results/gpu_check/$(date -u +%Y-%m-%dT%H-%M-%SZ)}
py=${PYTHON:-python}
budget=450 # seconds for all the steps: 8 minutes with the start-up and the table
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} # one GPU, whatever the machine has

# name | time limit (s) | command
steps=(
    "CUDA tests|90|$py -m pytest -q -ra tests -k 'cuda or gpu'"
    "1. epoch speed|90|$py benchmarks/epoch_speed.py --epochs 3 --baseline-batches 400"
    "3. sweep throughput|130|$py benchmarks/sweep_throughput.py --trials 16 --epochs 5 --parallel 1,2,4"
    "6. batched trials|90|$py benchmarks/batched_sweep.py --gpu-only --gpu-trials 32"
    "8. sweep workers|110|$py benchmarks/sweep_workers.py --trials 24 --epochs 3 --subset 10000"
)

if ((dry_run)); then
    echo "gpu_check (dry run): would check for a CUDA device, then run, within ${budget} s in all:"
    for step in "${steps[@]}"; do
        IFS='|' read -r name limit command <<<"$step"
        echo "  [$name] (at most ${limit} s) $command"
    done
    echo "and write $out/gpu_check.md"
    exit 0
fi

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU, or add --dry-run to see the steps" >&2
    exit 2
fi

mkdir -p "$out"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$SECONDS
failed=0
summary=()
for i in "${!steps[@]}"; do
    IFS='|' read -r name limit command <<<"${steps[$i]}"
    left=$((budget - (SECONDS - start)))
    ((limit > left)) && limit=$left
    log="$out/step$i.txt"
    if ((limit < 10)); then
        status="skipped: out of time"
        seconds=0
        failed=1
    else
        echo "== [$name] $command (at most ${limit} s)"
        began=$SECONDS
        timeout --kill-after=10 "$limit" bash -c "$command" 2>&1 | tee "$log"
        code=${PIPESTATUS[0]}
        seconds=$((SECONDS - began))
        case $code in
            0) status="ok" ;;
            124 | 137) status="out of time (${limit} s)"; failed=1 ;;
            *) status="failed (exit $code)"; failed=1 ;;
        esac
    fi
    summary+=("| $name | \`$command\` | $status | $seconds |")
done

report="$out/gpu_check.md"
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    echo "- $("$py" -c 'import torch, platform; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}")')"
    echo "- CPU cores: $(nproc), load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo
    echo "| step | command | status | seconds |"
    echo "|---|---|---|---|"
    printf '%s\n' "${summary[@]}"
    for i in "${!steps[@]}"; do
        IFS='|' read -r name _ _ <<<"${steps[$i]}"
        log="$out/step$i.txt"
        [[ -f "$log" ]] || continue
        echo
        echo "## $name"
        echo
        # the benchmark's device line and its table (pytest: its summary lines)
        grep -E '^(\||device|workers /|hparams_search|[0-9]+ (passed|failed)|FAILED|SKIPPED|ERROR)' "$log"
    done
} >"$report"
echo "== $((SECONDS - start)) s; the table: $report"
exit $failed
