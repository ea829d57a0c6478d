#!/usr/bin/env bash
# Set up lorahpo in ./.venv:  ./setup.sh         (the library, the CLI and the LoRA blackbox)
#                             ./setup.sh --test  (also what the test suite needs)
# A torch that is already importable in the venv is kept (GPU users keep their CUDA build);
# otherwise torch 2.13.0 is installed first and pinned.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
fi
if [ "${1:-}" = "--test" ]; then
  "$VPY" -m pip install --quiet --disable-pip-version-check -e '.[lora,web,eval,report,bench,cluster,dataframe,tracking,dashboard,quant,test]'
  # The browser test drives Debian's Chromium (no browser download); the shared-store tests start
  # a PostgreSQL server of Debian's packages in a temporary folder; generated code (HumanEval) runs
  # in bubblewrap with a seccomp filter built by libseccomp. Skipped where absent (outside CI).
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
  command -v bwrap >/dev/null || missing+=(bubblewrap)
  ldconfig -p 2>/dev/null | grep 'libseccomp\.so\.2' >/dev/null || missing+=(libseccomp2)
  if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "setup.sh: could not install ${missing[*]}; their tests will be skipped" >&2
  fi
else
  "$VPY" -m pip install --quiet --disable-pip-version-check -e '.[lora,web,eval,report]'
fi
