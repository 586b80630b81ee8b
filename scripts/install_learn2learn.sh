#!/usr/bin/env bash
# Installs learn2learn 0.2.0 (a benchmark peer) into the active environment.
# Its only release ships Cython-generated C that includes longintrepr.h, which Python 3.11
# removed, so the C files are regenerated from the archive's own .pyx sources first.
# Everything happens in a temporary folder; nothing of learn2learn enters this repository.
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip install -q cython
pip download -q --no-deps --no-binary :all: -d "$work" learn2learn==0.2.0
tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
cd "$work/learn2learn-0.2.0"
for module in meta_dataset task_dataset transforms; do
  cython -3 "learn2learn/data/$module.pyx"
done
pip install -q --no-build-isolation .
cd /
python -c "import learn2learn; print('learn2learn', learn2learn.__version__, 'installed')"
