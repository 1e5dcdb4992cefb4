#!/usr/bin/env bash
# The GPU measurements BENCHMARKS.md lacks, in one run on one H100/H200. Stage times on an
# H100 (2026-12-06, JAX 0.11.2, compile cache empty): compare 116 s (the carried
# block-causal model, batches 1 and 8, 256 prompts), breakdown 66 s, profile 21 s,
# rounds 62 s, loop (d=96) about 90 s; breakdown_350m about 100 s. Give each stage a
# limit (STAGES below) and put first what matters most.
#   rounds   one FeF round at 1.3B width, L=1024, batch 1, bf16 (whole, block-local, head)
#   loop     a sampler step or round against a bare call of the same rows, batch 1 and 64
#   profile  op by op (jax.profiler): the kernels a step or cached FeF round launches and
#            their time, on the comparison's block-causal backbone at batch 1
#   compare  the sampler comparison on two freshly trained PairSum models (bidirectional;
#            block-causal with a head, over the exact cache), batch 1, 8 and 256; its
#            block-causal grid holds the row most likely to reach issue 11's 2x at batch
#            1 (fef:steps=1,order=dilated,window=5: 3.01 calls per answer on the CPU)
#   compare_long  the comparison on PairSum with 15 pairs (compare_long.py: the block-causal
#            model, batch 1 and 8): 30-token answers, where exact FeF in the dilated order
#            takes 3.04 sequential calls against 30 for every exact one-token decoder, and
#            3.27 in the parity order over one drafted state per round (cache=prefix, 5.4
#            sequences per answer; CPU); the rows most likely to reach issue 11's 2x
#            (about 4 min to train on the CPU: carry runs/compare_long/block_causal_head)
#   compare_permutation  the comparison on Permutation (compare_permutation.py: one
#            bidirectional model, trained here), where no parallel schedule is accurate
#            and exact FeF takes about 4 calls for 8 tokens (about 6 min on the CPU)
#   train    training throughput and MFU of experiments/configs/gpu.py (200 steps)
#   breakdown  where a training step of gpu.py goes (startup phases, compile, device step,
#            host batch, prefetch, checkpoint, MFU, and an op profile of 20 steps: the
#            kernels' time per step, the device's busy share; experiments.benchmark_train)
#   breakdown_350m  the same for gpu_350m.py (not in the smoke run's default stages)
#   breakdown_nocb  the 85M breakdown with XLA's command buffers (CUDA graphs) off: on the
#            H100 a step took 93 ms on a resident batch and 137 ms on fresh ones; graphs
#            re-recorded for new buffer addresses would show as a smaller gap here
#   breakdown_1step  the 85M breakdown at one step per call (the configs train 10 steps
#            per call since 2026-12-06; the H100 numbers of that day are of one per call)
#   breakdown_xla  the 85M breakdown with XLA's attention in place of cuDNN's (the default
#            "auto" picks cuDNN on an H100/H200): which kernel the configs should use
#   breakdown_350m_remat  gpu_350m.py at batch 64, which ran out of memory without remat,
#            with the projections' outputs kept and attention recomputed
#            (remat=dots_with_no_batch_dims_saveable)
#   breakdown_1b  gpu_1b.py (1.3B, 24 x 2048, every block rematerialized), one step per
#            call, 3 timed steps (a step of batch 64 x 512 is about 0.7 s at 40% MFU)
#   compile  what the 85M model's fef sampler costs to compile, and to sample with new
#            parameters, with its parameters as arguments (as fj.sample passes them since
#            2026-12-07) and as constants (before); about 1 min on the 2-core CPU
# Every breakdown's table header names its compute dtype, remat policy and attention kernel.
# The last four stages have not run on a GPU yet: give them generous limits.
# Each stage prints its table, logs to OUT/<stage>.log, writes its JSON/Markdown under
# OUT/<stage>/ and reports its wall-clock.
#
#   bash experiments/gpu_suite.sh [OUT]            # default OUT: runs/gpu_suite
#   SMOKE=1 bash experiments/gpu_suite.sh OUT      # tiny sizes, any machine (a CPU check)
#   STAGES="compare:150 breakdown:100" bash experiments/gpu_suite.sh OUT
# STAGES picks the stages and their order; `name:S` stops that stage after S seconds (its
# log keeps what it printed), so a lease's time is spent on the stages that matter most.
# COMPARE_MODELS overrides compare.models, e.g. "('block_causal_head',)". A model already
# trained in OUT/compare/<model> (a carried checkpoint) is not trained again.
# A 15-minute lease leaves about 12 minutes of commands; with the comparisons' trained
# block-causal models carried (copy runs/compare/block_causal_head and
# runs/compare_long/block_causal_head into an ignored folder, carry it, and copy them to
# OUT/compare/ and OUT/compare_long/ first):
#   STAGES="compare_long:150 compare:150 breakdown:100 breakdown_1step:90 breakdown_nocb:90" \
#   TAR=$OUT/suite.tgz COMPARE_MODELS="('block_causal_head',)" DATA=.data/input.txt \
#   bash experiments/gpu_suite.sh OUT
# One command may run 600 s at most; the training options' stages fit a second one, e.g.
#   STAGES="breakdown_xla:100 breakdown_350m_remat:150 breakdown_1b:200" TAR=... DATA=...
# TAR=<file> packs OUT's logs, tables and JSON (not checkpoints) into one file at the end.
#
# The device machine has no network and lacks ml-collections and tensorboardX, and
# ../shared does not travel. Before the run, in the repository root (see the device
# tool's README for the pip flags that fetch wheels for its Python):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml-collections tensorboardX
#   mkdir -p .data && cp ../shared/data/tinyshakespeare/input.txt .data/
# then run with carry [".whl", ".data"]: `DATA=.data/input.txt bash experiments/gpu_suite.sh`.
# Wheels in .whl/ are installed into /tmp/site first.
set -euo pipefail
out=${1:-runs/gpu_suite}
py=${PYTHON:-python3}
data=${DATA:-../shared/data/tinyshakespeare/input.txt}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$out"
"$py" -c "import jax; print('devices:', jax.devices())" | tee "$out/devices.log"

stage() {  # stage NAME SECONDS COMMAND...: runs it (stopped after SECONDS unless 0), keeps
           # its log (progress bars dropped)
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  echo "== $name"
  timeout -k 10 "$limit" "$@" 2>&1 | sed -e 's/\r/\n/g' | sed -e '/it\/s/d' -e '/s\/it/d' \
    > "$out/$name.log" || rc=$?
  tail -n 30 "$out/$name.log"
  if [ "$rc" = 0 ]; then
    echo "== $name: $((SECONDS - start)) s"
  elif [ "$rc" = 124 ]; then
    echo "== $name: $((SECONDS - start)) s (stopped at its limit of $limit s)"
  else
    echo "== $name: $((SECONDS - start)) s (FAILED, exit $rc)"
    failed=1
  fi
}
failed=0

if [ "${SMOKE:-0}" = 1 ]; then
  rounds=(--d_models=32 --lengths=32 --span=8 --windows=2,4 --batch=1 --num_layers=1
          --vocab_size=16 --repeats=2)
  loop=(--d_models=16 --length=8 --vocab_size=8 --batches=1,2 --repeats=2
        --samplers=first_hitting,fef:window=2)
  tiny_compare=(--config.optimizer.total_steps=20 --config.optimizer.warmup_steps=5
                --config.log_every=10 --config.eval_every=20 --config.checkpoint.every=20
                --config.sample.every=0 --config.model.num_layers=1 --config.model.d_model=32
                --config.model.mlp_dim=64 --config.data.num_examples=500
                --config.eval_batch_size=32 --config.compare.num_prompts=8
                "--config.compare.batch_sizes=(1, 8)")
  compare=("${tiny_compare[@]}" "--config.compare.models=('bidirectional',)"
           "--config.compare.samplers=('first_hitting', 'fef:steps=1,window=2')")
  train=(--config.optimizer.total_steps=4 --config.optimizer.warmup_steps=1
         --config.log_every=2 --config.eval_every=4 --config.checkpoint.every=4
         --config.model.num_layers=1 --config.model.d_model=64 --config.model.num_heads=2
         --config.model.mlp_dim=128 --config.batch_size=4 --config.data.length=32
         --config.eval_batch_size=4 --config.sample.every=0)
  breakdown=("${train[@]}" --steps=2 --profile_steps=2)
  remat350=()  # the smoke's batch of 4 stays
  profile=(--d_model=16 --num_layers=1 --length=8 --masked=4 --vocab_size=8 --runs=2
           --samplers=first_hitting)
  long=("${tiny_compare[@]}"
        "--config.compare.cached_samplers=('first_hitting', 'fef:steps=1,order=dilated,window=15')")
  compile=(--d_model=64 --num_layers=1 --length=8 --masked=3 --vocab_size=8)
  stages=${STAGES:-rounds loop profile compare compare_long compare_permutation train breakdown
    compile}
else
  rounds=(--d_models=2048 --lengths=1024 --span=32 --windows=4,16 --batch=1 --num_layers=4
          --vocab_size=256 --dtype=bfloat16 --repeats=7)
  loop=(--d_models=96 --length=256 --vocab_size=256 --batches=1,64 --repeats=5)
  compare=(--config.compare.num_prompts=256 "--config.compare.batch_sizes=(1, 8, 256)")
  # The rows that matter on a GPU (each costs a compile per batch size): the exact
  # one-token references, uncached (in three orders) and cached, whole-copy FeF left to
  # right and in the dilated order, FeF over one drafted state per round
  # (cache=prefix), cached FeF.
  long=(--config.compare.num_prompts=256 "--config.compare.batch_sizes=(1, 8)"
        "--config.compare.cached_samplers=('first_hitting:select=position', \
'first_hitting:select=dilated', 'first_hitting:select=parity', \
'fef:block_length=2,cache=exact,window=1', 'fef:steps=1,window=2', \
'fef:steps=1,order=dilated,window=8', 'fef:steps=1,order=dilated,window=15', \
'fef:steps=1,order=parity,window=15,cache=prefix', 'fef:block_length=2,cache=exact,window=2')")
  train=(--config.optimizer.total_steps=200 --config.log_every=50 --config.eval_every=200
         --config.checkpoint.every=200 --config.sample.every=0)
  breakdown=(--config.sample.every=0 --steps=20 --profile_steps=20)
  remat350=(--config.batch_size=64)
  profile=(--runs=20)
  compile=(--samplers=fef:steps=1\;window=4)
  stages=${STAGES:-compare_long breakdown breakdown_1step breakdown_nocb compare
    compare_permutation profile rounds loop train breakdown_350m breakdown_xla
    breakdown_350m_remat breakdown_1b compile}
fi
permutation=("${compare[@]}")  # its one model is bidirectional whatever COMPARE_MODELS says
if [ -n "${COMPARE_MODELS:-}" ]; then
  compare+=("--config.compare.models=$COMPARE_MODELS")
fi

run_stage() {  # run_stage NAME SECONDS
  case $1 in
    rounds) stage "$@" "$py" -m experiments.benchmark_rounds "${rounds[@]}" \
      --workdir="$out/rounds" ;;
    loop) stage "$@" "$py" -m experiments.benchmark_loop "${loop[@]}" --workdir="$out/loop" ;;
    profile) stage "$@" "$py" -m experiments.benchmark_profile "${profile[@]}" \
      --workdir="$out/profile" ;;
    compare) stage "$@" "$py" -m experiments.compare --config=experiments/configs/compare.py \
      --workdir="$out/compare" "${compare[@]}" ;;
    compare_long) stage "$@" "$py" -m experiments.compare \
      --config=experiments/configs/compare_long.py --workdir="$out/compare_long" "${long[@]}" ;;
    compare_permutation) stage "$@" "$py" -m experiments.compare \
      --config=experiments/configs/compare_permutation.py \
      --workdir="$out/compare_permutation" "${permutation[@]}" ;;
    train) stage "$@" "$py" -m experiments.train --config=experiments/configs/gpu.py \
      --config.data.path="$data" --workdir="$out/train" "${train[@]}" ;;
    breakdown|breakdown_nocb|breakdown_1step|breakdown_xla)
      local flags=${XLA_FLAGS:-} options=()
      if [ "$1" = breakdown_nocb ]; then flags+=" --xla_gpu_enable_command_buffer="; fi
      if [ "$1" = breakdown_1step ]; then options=(--config.steps_per_call=1); fi
      if [ "$1" = breakdown_xla ]; then options=(--config.model.attention_impl=xla); fi
      XLA_FLAGS="$flags" stage "$@" "$py" -m experiments.benchmark_train \
        --config=experiments/configs/gpu.py --config.data.path="$data" \
        --workdir="$out/$1" "${breakdown[@]}" "${options[@]}" ;;
    breakdown_350m) stage "$@" "$py" -m experiments.benchmark_train \
      --config=experiments/configs/gpu_350m.py --config.data.path="$data" \
      --workdir="$out/breakdown_350m" "${breakdown[@]}" --steps=5 ;;
    breakdown_350m_remat) stage "$@" "$py" -m experiments.benchmark_train \
      --config=experiments/configs/gpu_350m.py --config.data.path="$data" \
      --workdir="$out/breakdown_350m_remat" "${breakdown[@]}" --steps=5 "${remat350[@]}" \
      --config.model.remat=dots_with_no_batch_dims_saveable ;;
    breakdown_1b) stage "$@" "$py" -m experiments.benchmark_train \
      --config=experiments/configs/gpu_1b.py --config.data.path="$data" \
      --workdir="$out/breakdown_1b" "${breakdown[@]}" --config.steps_per_call=1 --steps=3 \
      --profile_steps=2 ;;
    compile) stage "$@" "$py" -m experiments.benchmark_compile "${compile[@]}" \
      --workdir="$out/compile" ;;
  esac
}

for entry in $stages; do  # every name checked before any stage spends the lease's time
  case ${entry%%:*} in
    rounds|loop|profile|compare|compare_long|compare_permutation|train|breakdown\
      |breakdown_nocb\
      |breakdown_1step|breakdown_350m|breakdown_xla|breakdown_350m_remat|breakdown_1b\
      |compile) ;;
    *) echo "unknown stage: ${entry%%:*} (in STAGES=\"$stages\")" >&2; exit 2 ;;
  esac
done
for entry in $stages; do
  run_stage "${entry%%:*}" "$([[ $entry == *:* ]] && echo "${entry#*:}" || echo 0)"
done
if [ -n "${TAR:-}" ]; then  # one file to bring back (the device tool returns at most 8)
  tar czf "$TAR" -C "$out" --exclude='./compare*/*/checkpoints' --exclude='./compare*/*/best' \
    --exclude='scratch' --exclude='*/tensorboard' .
  echo "wrote $TAR"
fi
exit $failed
