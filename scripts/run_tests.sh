#!/usr/bin/env bash
# The test command: set up .venv (see setup_env.sh) and .venv-openclip (setup_openclip.sh), then run the whole test
# suite. Extra args go to pytest.
# Every test's duration is saved in runs/tests/junit.xml (JUnit XML; the slowest 15 are also printed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_openclip.sh   # open_clip's own trainer, for tests/test_openclip.py
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
mkdir -p runs/tests
exec .venv/bin/python -m pytest -q --junitxml=runs/tests/junit.xml "$@"
