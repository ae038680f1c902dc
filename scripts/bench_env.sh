# Sourced by the bench scripts: the output folder, and a calibration store of each
# script's own, fresh each time, so that the predictions shown are the built-in model's
# and the user's store stays untouched (a store the caller names is used as it is).
out=bench-out
mkdir -p "$out"
if [[ -z ${MLXSUP_CALIBRATION:-} || ${MLXSUP_BENCH_STORE:-} == 1 ]]; then
  export MLXSUP_BENCH_STORE=1
  export MLXSUP_CALIBRATION=$out/calibration-$(basename "$0" .sh).json
  rm -f "$MLXSUP_CALIBRATION"
fi
