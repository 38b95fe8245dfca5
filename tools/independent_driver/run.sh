#!/usr/bin/env bash
# Start the planner node like a user would, run the independent PointMaze
# driver against it, stop the planner with SIGINT, print the driver's JSON.
#
# usage: bash tools/independent_driver/run.sh ENV_ID BUNDLE_DIR [PROFILE.yaml] OUT.json [EPISODES]
#   e.g. bash tools/independent_driver/run.sh PointMaze_UMaze-v3 models/pointmaze_umaze out.json 5
#        bash tools/independent_driver/run.sh PointMaze_UMaze-v3 models/pointmaze_umaze \
#            tools/independent_driver/umaze_no_env.yaml out.json 5
# env vars: ROS_DOMAIN_ID (default: random 20..89), WAIT_TIMEOUT (default 180),
#           SEED (default 0), DRIVER_ARGS (extra driver arguments)
set -u
set -m   # job control: the background planner gets its own process group and
         # does not start with SIGINT ignored (as in an interactive terminal)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV=${VENV:-$(cd "$HERE/../.." && pwd)/.venv}

if [ $# -lt 3 ]; then
  echo "usage: $0 ENV_ID BUNDLE_DIR [PROFILE.yaml] OUT.json [EPISODES]" >&2
  exit 64
fi
ENV_ID=$1; BUNDLE=$2; PROFILE=""
if [ $# -ge 5 ]; then
  PROFILE=$3; OUT=$4; EPISODES=$5
elif [ $# -eq 4 ]; then
  case "$3" in
    *.yaml|*.yml) PROFILE=$3; OUT=$4; EPISODES=5 ;;
    *)            OUT=$3; EPISODES=$4 ;;
  esac
else
  OUT=$3; EPISODES=5
fi
[ "$PROFILE" = "-" ] && PROFILE=""

BUNDLE=$(realpath "$BUNDLE")
[ -n "$PROFILE" ] && PROFILE=$(realpath "$PROFILE")
mkdir -p "$(dirname "$OUT")"
OUT=$(realpath -m "$OUT")
BASE=${OUT%.json}
PLANNER_LOG=$BASE.planner.log
DRIVER_LOG=$BASE.driver.log

export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((20 + RANDOM % 70))}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export PYTHONUNBUFFERED=1

PARAMS=(-p "bundle:=$BUNDLE")
[ -n "$PROFILE" ] && PARAMS+=(-p "profile:=$PROFILE")

echo "[run.sh] env=$ENV_ID bundle=$BUNDLE profile=${PROFILE:-<none>} episodes=$EPISODES" >&2
echo "[run.sh] ROS_DOMAIN_ID=$ROS_DOMAIN_ID planner log: $PLANNER_LOG driver log: $DRIVER_LOG" >&2

"$VENV/bin/planner_node" --ros-args "${PARAMS[@]}" \
    -r joint_states:=/my_robot/joint_states -r commands:=/my_robot/cmd \
    >"$PLANNER_LOG" 2>&1 &
PLANNER_PID=$!
echo "[run.sh] planner pid $PLANNER_PID" >&2

stop_planner() {
  if kill -0 "$PLANNER_PID" 2>/dev/null; then
    kill -INT "$PLANNER_PID" 2>/dev/null
    for _ in $(seq 1 200); do
      kill -0 "$PLANNER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$PLANNER_PID" 2>/dev/null; then
      echo "[run.sh] planner did not exit within 20 s of SIGINT; killing" >&2
      kill -KILL "$PLANNER_PID" 2>/dev/null
      PLANNER_KILLED=1
    fi
  fi
  wait "$PLANNER_PID" 2>/dev/null
  PLANNER_RC=$?
}
PLANNER_KILLED=0
PLANNER_RC=""
trap 'stop_planner; exit 130' INT TERM

"$VENV/bin/python" "$HERE/maze_driver.py" --env "$ENV_ID" --episodes "$EPISODES" \
    --seed "${SEED:-0}" --json "$OUT" --wait-timeout "${WAIT_TIMEOUT:-180}" \
    ${DRIVER_ARGS:-} >"$DRIVER_LOG" 2>&1
DRIVER_RC=$?

stop_planner
trap - INT TERM
echo "[run.sh] driver rc=$DRIVER_RC planner rc=$PLANNER_RC killed=$PLANNER_KILLED" >&2
if [ -f "$OUT" ]; then
  cat "$OUT"
else
  echo "[run.sh] no JSON written; driver log tail:" >&2
  tail -n 30 "$DRIVER_LOG" >&2
fi
exit $DRIVER_RC
