#!/usr/bin/env bash
# The GPU check: on a CUDA machine, set up .venv (reusing the installed CUDA torch), verify the compiled Triton
# kernels and torch's CUDA BatchNorm against the oracle, time them, and write reports/gpu/latest.{md,json} with the
# environment, the copy bandwidth, the verification summary, the timings and the performance targets.
#
#   scripts/gpu-check.sh [--cpu-smoke] [--budget S] [--out DIR] [--python PY] [--skip STEP ...]
#
#   --cpu-smoke  the same steps on the CPU, in a temporary copy of the repository: the quick profile, tiny shapes,
#                triton under TRITON_INTERPRET=1 (checks this script's logic; its figures mean nothing)
#   --budget S   wall-clock limit for all steps in seconds (default 450; smoke 720); each step has its own limit,
#                cut to what is left, and the report is always written
#   --out DIR    also copy latest.md, latest.json and logs.tar.gz (every step's log and output) to DIR
#   --python PY  the Python whose torch to reuse (default: $PYTHON, else python3)
#   --skip STEP  leave out a step (setup, env, verify, bench, fused-relu, fused-add_relu, compile), repeatable;
#                without setup, PY runs bncheck
#                from this tree (or .venv, if an earlier run set it up)
#
# Steps: setup (.venv reusing the installed torch), env (GPU, driver, versions), verify (bncheck run: triton-bn,
# torch-bn2d, torch-functional against the oracle), bench (triton-bn against torch native: ResNet-50 NCHW/NHWC,
# BatchNorm1d, 3-d and small-C shapes in float32, float16, bfloat16), fused-relu / fused-add_relu (the fused
# epilogue kernels against torch eager BatchNorm + add + ReLU), compile (torch-compile-bn, when that plugin
# exists), report (reports/gpu/latest.{md,json} with the targets evaluated). Each step's outcome (ok, failed,
# timeout, skipped) is recorded and the next step runs regardless. Exit status: 0 when every step that ran
# succeeded, 1 otherwise, 2 for usage errors.
set -u

MODE=cuda
BUDGET=
OUT=
PY=${PYTHON:-python3}
SKIP=" "
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
    case $1 in
        --cpu-smoke) MODE=cpu-smoke ;;
        --budget) BUDGET=${2:-}; shift ;;
        --out) OUT=${2:-}; shift ;;
        --python) PY=${2:-}; shift ;;
        --skip)
            case ${2:-} in
                setup|env|verify|bench|fused-relu|fused-add_relu|compile) SKIP="$SKIP$2 " ;;
                *) echo "gpu-check: --skip '${2:-}': one of setup, env, verify, bench, fused-relu, fused-add_relu, compile" >&2; exit 2 ;;
            esac
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case ${BUDGET:-x} in
    x) BUDGET=$([ "$MODE" = cuda ] && echo 450 || echo 720) ;;
    *[!0-9]*|'') echo "gpu-check: --budget '$BUDGET': a whole number of seconds" >&2; exit 2 ;;
esac
command -v "$PY" >/dev/null 2>&1 || { echo "gpu-check: --python '$PY': not found" >&2; exit 2; }
[ -z "$OUT" ] || mkdir -p "$OUT" || { echo "gpu-check: --out '$OUT': cannot create it" >&2; exit 2; }
[ -z "$OUT" ] || OUT=$(cd "$OUT" && pwd)

REPO=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=45                        # kept for the report step

if [ "$MODE" = cuda ]; then
    WORK=$REPO
    DEVICE=cuda
    unset TRITON_INTERPRET        # compiled kernels, not the interpreter
    PROFILE=default
    # torch.compile compiles per shape: the quick profile, every property in a run of its own (compilations in
    # parallel; Inductor's caches are shared on disk)
    COMPILE_PROFILE=quick COMPILE_GROUPS=10 COMPILE_PROPERTIES=all
    SHAPES=gpu
    REP_MS=25                     # do_bench: 25 ms of timed runs per operation (at least ~50 runs here)
    # Triton compiles a kernel per specialisation (~260 for the quick profile's shapes and dtypes, ~230 for the gpu
    # shape set): the verification runs in groups of properties side by side, and the bench compiles ahead in
    # parallel, so the compilations use the machine's cores
    VERIFY_GROUPS=5 VERIFY_JOBS=3  # 5 runs of 3 workers (one per implementation) on 16 cores
    PRECOMPILE_JOBS=12
    SMALLC_MIN_ROWS=1048576
    # per-step limits (seconds), each cut to the budget left; the bench's Triton compilations are in its limit
    T_SETUP=120 T_ENV=60 T_VERIFY=180 T_BENCH=210 T_FUSED=60 T_COMPILE=120 T_REPORT=60
else
    # a copy of the tracked and untracked-but-not-ignored files, so the smoke run leaves the repository untouched
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-smoke.XXXXXX")
    [ -z "$OUT" ] || trap 'cd / && rm -rf "$WORK"' EXIT   # with --out the copy goes once the run ends, however
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z -co --exclude-standard | tar cf - --null -T - 2>/dev/null) | tar xf - -C "$WORK"
    else
        tar cf - -C "$REPO" --exclude=.venv --exclude=reports . | tar xf - -C "$WORK"
    fi
    DEVICE=cpu
    export TRITON_INTERPRET=1
    PROFILE=quick
    COMPILE_PROFILE=quick COMPILE_GROUPS=1 COMPILE_PROPERTIES=forward   # Inductor's C++ on two cores: one property
    SHAPES=smoke
    REP_MS=2
    SMALLC_MIN_ROWS=4096          # the smoke set's (64, 3, 8, 8) counts as small-C
    VERIFY_GROUPS=2 VERIFY_JOBS=1  # two single-worker runs on two cores
    PRECOMPILE_JOBS=2
    T_SETUP=120 T_ENV=60 T_VERIFY=300 T_BENCH=240 T_FUSED=120 T_COMPILE=60 T_REPORT=60
fi
cd "$WORK" || exit 1
VENV=$WORK/.venv
VPY=$VENV/bin/python
GPU_DIR=$WORK/reports/gpu
LOGS=$GPU_DIR/logs
rm -rf "$LOGS" "$GPU_DIR/verify" "$GPU_DIR/compile" "$GPU_DIR/bench.json" "$GPU_DIR/bench.md"
mkdir -p "$LOGS"
STEPS=$LOGS/steps.tsv
: >"$STEPS"
FAILED=0
export PYTHONUNBUFFERED=1 BNCHECK_DISABLE_ENTRY_POINTS=1

record() {  # record NAME STATUS RC SECONDS NOTE
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(printf '%s' "$5" | tr '\t\n' '  ')" "logs/$1.log" \
        >>"$STEPS"
    printf 'gpu-check: %-8s %-8s exit %-4s %5ss  %s\n' "$1" "$2" "$3" "$4" "$5"
    case $2 in failed|timeout) FAILED=1 ;; esac
}

skipped() { case $SKIP in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# step NAME LIMIT NOTE-ON-FAILURE CMD...: run CMD under min(LIMIT, budget left) seconds, log to logs/NAME.log
step() {
    local name=$1 limit=$2 onfail=$3 left t0 rc status note=
    shift 3
    if skipped "$name"; then
        record "$name" skipped - 0 "--skip $name"
        return 98
    fi
    left=$((DEADLINE - $(date +%s) - RESERVE))
    [ "$name" = report ] && left=$limit   # the report is always written
    if [ "$left" -lt 10 ]; then
        record "$name" skipped - 0 "no time left in the ${BUDGET} s budget"
        return 99
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s)
    echo "\$ $*" >"$LOGS/$name.log"
    timeout -k 15 "$limit" "$@" >>"$LOGS/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout; note="stopped after its ${limit} s limit" ;;
        *) status=failed; note=$onfail ;;
    esac
    record "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$note"
    [ "$rc" -eq 0 ] || tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'
    return "$rc"
}

# -- setup: .venv seeing the installed torch, bncheck installed in it; `make run` / `make test` then reuse it ------
IMPORTS='import torch, hypothesis, tabulate, numpy, bncheck'
[ "$MODE" = cuda ] && IMPORTS="$IMPORTS; assert torch.cuda.is_available(), 'torch sees no CUDA device'"

setup_venv() {
    set -e
    "$PY" -c 'import torch; print("python", __import__("sys").executable, "torch", torch.__version__,
                "cuda available", torch.cuda.is_available())'
    if [ "$MODE" = cuda ]; then
        "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "this torch sees no CUDA device")'
    fi
    if [ ! -x "$VPY" ]; then   # (without pip where the interpreter lacks ensurepip: pip is reused below)
        "$PY" -m venv --system-site-packages "$VENV" || "$PY" -m venv --system-site-packages --without-pip "$VENV"
    fi
    if ! "$VPY" -c 'import torch' 2>/dev/null; then
        # $PY is itself a virtual environment (--system-site-packages reaches only its base interpreter): add its
        # package directories after the venv's own, so the venv reuses that torch instead of installing one
        local vsite
        vsite=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$PY" -c 'import sys; print("\n".join(f"import site; site.addsitedir({p!r})" for p in sys.path
                                              if p.endswith("-packages")))' >"$vsite/_reuse_installed_packages.pth"
        echo "reusing the packages of $PY through $vsite/_reuse_installed_packages.pth"
    fi
    "$VPY" -c 'import torch; print("venv torch", torch.__version__, torch.__file__)'
    if [ "$MODE" = cuda ]; then
        # the README's path: make installs bncheck with its extras (needs a package index; fails fast offline)
        if PIP_RETRIES=0 PIP_TIMEOUT=5 make setup PY="$PY"; then
            set +e
            return 0
        fi
        echo "make setup could not install from a package index: installing bncheck alone, from this tree"
    fi
    if [ -d "$WORK/.whl" ]; then   # wheels carried for packages the machine lacks
        "$VPY" -m pip install -q --no-index --find-links "$WORK/.whl" "$WORK"/.whl/*.whl
    fi
    "$VPY" -c "${IMPORTS%%, bncheck*}"   # the required packages are there (never installs a torch)
    if ! "$VPY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$WORK"; then
        # no usable build backend offline: the same effect as an editable install, by hand
        echo "pip could not install bncheck offline: bncheck from this tree through a .pth file and a launcher"
        local vsite
        vsite=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$WORK" >"$vsite/_bncheck_source_tree.pth"
        printf '#!%s\nimport sys\nfrom bncheck.cli import main\nsys.exit(main())\n' "$VPY" >"$VENV/bin/bncheck"
        chmod +x "$VENV/bin/bncheck"
    fi
    touch "$VENV/bin/.installed"   # make's setup target is then up to date: `make run` / `make test` reuse .venv
    (cd / && "$VPY" -c 'import bncheck; print("bncheck from", bncheck.__file__)')
    if command -v make >/dev/null && make -q setup PY="$PY"; then
        echo "make's setup target is up to date: make run and make test use this .venv"
    fi
    set +e
}
export MODE PY VENV VPY WORK IMPORTS
export -f setup_venv
step setup "$T_SETUP" "the venv could not be set up (see logs/setup.log)" bash -c setup_venv
if ! "$VPY" -c "$IMPORTS" >/dev/null 2>&1; then
    # last resort: the given Python with bncheck from this tree
    VPY=$PY
    export PYTHONPATH=$WORK${PYTHONPATH:+:$PYTHONPATH}
    record setup-fallback ok - 0 "running with $PY and PYTHONPATH=$WORK"
fi
BNCHECK=("$VPY" -m bncheck)

# -- environment --------------------------------------------------------------------------------------------------
step env "$T_ENV" "could not read the environment" \
    "$VPY" -m bncheck.gpu.report environment --device "$DEVICE" --out "$LOGS/environment.json"
if [ "$MODE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1
fi

# -- verification of the compiled kernels and torch's CUDA paths against the oracle --------------------------------
# run_groups NAME PROFILE GROUPS JOBS PROPERTIES IMPL...: GROUPS runs of `bncheck run` side by side, each over every
# GROUPS-th of PROPERTIES ("all": every property), into NAME/<group>/latest.json, logs in logs/NAME-<group>.log. The
# report merges them; a group that finishes keeps its report if another is stopped. Exit status: the largest.
run_groups() {
    local name=$1 profile=$2 groups=$3 jobs=$4 props=$5 i j p pids=() rc=0 r impls=()
    shift 5
    for p in "$@"; do impls+=(--impl "$p"); done
    if [ "$props" = all ]; then
        props=$("$VPY" -c 'from bncheck.properties import PROPERTIES; print(" ".join(p.name for p in PROPERTIES))') ||
            return 1
    fi
    for ((i = 0; i < groups; i++)); do
        local args=() j=0
        for p in $props; do
            [ $((j % groups)) -eq "$i" ] && args+=(--property "$p")
            j=$((j + 1))
        done
        [ ${#args[@]} -gt 0 ] || continue
        echo "group $i: ${args[*]}"
        "$VPY" -m bncheck run --device "$DEVICE" --kind batchnorm "${impls[@]}" --profile "$profile" --jobs "$jobs" \
            "${args[@]}" --out "$GPU_DIR/$name/$i" >"$LOGS/$name-$i.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}"
        r=$?
        echo "group $i: exit $r"
        tail -n 4 "$LOGS/$name-$i.log"
        [ "$r" -gt "$rc" ] && rc=$r
    done
    return "$rc"
}
export VPY DEVICE GPU_DIR LOGS
export -f run_groups
step verify "$T_VERIFY" "exit 1: an unexpected or missing finding, or a plugin failed to load (see Verification)" \
    bash -c 'run_groups "$@"' run_groups verify "$PROFILE" "$VERIFY_GROUPS" "$VERIFY_JOBS" all \
    triton-bn torch-bn2d torch-functional triton-fused-bn-relu triton-fused-bn-add-relu

# -- timings: triton-bn against torch native -------------------------------------------------------------------------
step bench "$T_BENCH" "the bench did not finish" \
    "${BNCHECK[@]}" bench --device "$DEVICE" --shapes "$SHAPES" --dtype float32 --dtype float16 --dtype bfloat16 \
    --impl triton-bn --rep-ms "$REP_MS" --precompile-jobs "$PRECOMPILE_JOBS" --out "$GPU_DIR"

# -- timings of the fused epilogue kernels: relu(bn(x)) and relu(bn(x) + z) against torch eager -----------------------
for ep in relu add_relu; do
    step "fused-$ep" "$T_FUSED" "the fused $ep bench did not finish" \
        "${BNCHECK[@]}" bench --device "$DEVICE" --shapes "$SHAPES" --dtype float32 --dtype float16 \
        --epilogue "$ep" --rep-ms "$REP_MS" --json "$GPU_DIR/fused-$ep.json"
done

# -- torch.compile of torch's BatchNorm (when the framework plugin is there) ------------------------------------------
skipped compile || "${BNCHECK[@]}" list >"$LOGS/list.log" 2>&1
if skipped compile || grep -qw torch-compile-bn "$LOGS/list.log"; then
    step compile "$T_COMPILE" "exit 1: an unexpected or missing finding, or a plugin failed to load" \
        bash -c 'run_groups "$@"' run_groups compile "$COMPILE_PROFILE" "$COMPILE_GROUPS" 1 "$COMPILE_PROPERTIES" \
        torch-compile-bn
else
    record compile skipped - 0 \
        "no torch-compile-bn plugin in \`bncheck list\` (implementations/frameworks/torch_compile.py)"
fi

# -- the report -------------------------------------------------------------------------------------------------------
# the report step reads the step log, so its own line is appended afterwards: its outcome shows in the output and
# the exit status
RUN_REPORTS=()
for f in "$GPU_DIR"/verify/*/latest.json; do
    [ -f "$f" ] && RUN_REPORTS+=(--verify "$f")
done
for f in "$GPU_DIR"/compile/*/latest.json; do
    [ -f "$f" ] && RUN_REPORTS+=(--compile "$f")
done
step report "$T_REPORT" "the report could not be written" \
    "$VPY" -m bncheck.gpu.report build --mode "$MODE" --env "$LOGS/environment.json" --steps "$STEPS" \
    ${RUN_REPORTS[@]+"${RUN_REPORTS[@]}"} --bench "$GPU_DIR/bench.json" \
    --smallc-min-rows "$SMALLC_MIN_ROWS" --out "$GPU_DIR"
sed -n '/^target /p; /^wrote /p' "$LOGS/report.log"
echo "gpu-check: $MODE run took $(($(date +%s) - START)) s; report: $GPU_DIR/latest.md"

if [ -n "$OUT" ]; then
    cp "$GPU_DIR/latest.md" "$GPU_DIR/latest.json" "$OUT/" 2>/dev/null
    tar czf "$OUT/logs.tar.gz" -C "$GPU_DIR" logs $(cd "$GPU_DIR" && ls -d verify compile bench.json bench.md fused-*.json \
        2>/dev/null)
    echo "gpu-check: copied latest.md, latest.json and logs.tar.gz to $OUT"
elif [ "$MODE" != cuda ]; then
    echo "gpu-check: the smoke run's copy of the repository stays in $WORK"
fi
exit "$FAILED"
