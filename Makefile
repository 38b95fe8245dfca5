# Quick start: `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv on first use. Without an NVIDIA driver the CPU build of torch is installed
# first, so the generic torch requirement never pulls the CUDA packages. Every other package is
# pinned by constraints.txt to the versions the suite last passed with.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
export MINARI_DATASETS_PATH ?= $(CURDIR)/datasets

.PHONY: setup demo evaluate test check lint clean

setup: $(STAMP)

$(STAMP): setup.py Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -c constraints.txt "torch==$(TORCH_VERSION)"; \
	else \
		$(PY) -m pip install -c constraints.txt "torch==$(TORCH_VERSION)+cpu" \
			|| $(PY) -m pip install -c constraints.txt "torch==$(TORCH_VERSION)" \
			--index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -c constraints.txt -e '.[ros,dev,fast,bags,data]'
	touch $(STAMP)

# The sim graph (bridge + planner over rclpy / Fast DDS, from launch/sim.launch.py) in lockstep,
# with random goals sent on goal_pose; prints success rate and latency.
demo: setup
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(VENV)/bin/sim_graph --episodes 10

# The same bundle with no ROS: gymnasium episodes and the figures table.
evaluate: setup
	$(PY) training/evaluate.py --bundle models/pointmaze_umaze --episodes 10 --seed 1000

# Two tests at a time (pytest-xdist), then the serial ones alone: a sim graph scored through its
# client needs every message, and a starved client loses some from the bridge's queues; a node
# fuzzed at 500 Hz must take in (nearly) every message.
# Both share one ONNX export cache (.test-cache/), so a bundle exports once.
test: setup
	DIFFUSION_PLANNER_CACHE_DIR=$(CURDIR)/.test-cache \
		$(PY) -m pytest -q test -n 2 -m "not serial" --durations=20
	DIFFUSION_PLANNER_CACHE_DIR=$(CURDIR)/.test-cache \
		$(PY) -m pytest -q test -m serial --durations=10

# The fast unit layer (no ROS graph, no whole runs), for a developer between edits.
check: setup
	$(PY) -m pytest -q test -n 2 -m "not ros and not slow"

lint: setup
	$(PY) -m flake8 diffusion_planner_ros training tools test launch setup.py
	$(PY) -m pydocstyle diffusion_planner_ros training tools/reliability tools/benchmark launch

clean:
	rm -rf $(VENV) build install log .test-cache
