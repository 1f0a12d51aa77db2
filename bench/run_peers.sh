#!/usr/bin/env bash
# The benchmark runs quoted in bench/README.md, with ../shared/bench/peers.py.
# Needs the peers' venvs set up as ../shared/bench/README.md says (/tmp/peers and
# /tmp/peers-g25) and forkhorn installed in /tmp/peers: /tmp/peers/bin/pip install -e '.[fast,gevent,eventlet]'
# Usage: bench/run_peers.sh [pinned|goals|classic|cores|sleep|all]   (results go to bench/results/)
# Round-by-round ratios of a result: python bench/paired.py bench/results/goals.json forkhorn-fast granian
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${PEERS:-$here/../../shared/bench/peers.py}
py=${PEERS_PY:-/tmp/peers/bin/python}
out=$here/results
mkdir -p "$out"
fk='forkhorn --workers {workers} --bind 127.0.0.1:{port}'
specs=(
  --spec "forkhorn-sync=$fk -k sync {app}"
  --spec "forkhorn-gthread=$fk -k gthread --threads 8 {app}"
  --spec "forkhorn-gevent=$fk -k gevent {app}"
  --spec "forkhorn-eventlet=$fk -k eventlet {app}"
  --spec "forkhorn-fast=$fk -k fast {app}"
  --spec "gunicorn-gthread=/tmp/peers/bin/gunicorn --bind 127.0.0.1:{port} --workers {workers} --worker-class gthread --threads 8 {app}"
  --spec "gunicorn-eventlet=/tmp/peers-g25/bin/gunicorn --bind 127.0.0.1:{port} --workers {workers} --worker-class eventlet {app}"
)
what=${1:-all}
if [[ $what == pinned || $what == all ]]; then
  "$py" "$peers" "${specs[@]}" \
    --servers gunicorn-sync,gunicorn-gthread,gunicorn-gevent,gunicorn-eventlet,meinheld,granian,bjoern,forkhorn-sync,forkhorn-gthread,forkhorn-gevent,forkhorn-eventlet,forkhorn-fast \
    --apps hello,todo --workers 1 --pin -c 50 -t 2 -d 6 --rounds 3 \
    --json "$out/pinned.json" --markdown "$out/pinned.md"
fi
if [[ $what == goals || $what == all ]]; then
  # The pinned load with only the servers the fast worker's goals name, and enough rounds
  # for bench/paired.py to give quartiles of the per-round ratio.
  "$py" "$peers" "${specs[@]}" \
    --servers meinheld,granian,bjoern,forkhorn-fast \
    --apps hello,todo --workers 1 --pin -c 50 -t 2 -d 6 --rounds 9 \
    --json "$out/goals.json" --markdown "$out/goals.md"
  {
    python3 "$here/paired.py" "$out/goals.json" forkhorn-fast granian --app hello
    python3 "$here/paired.py" "$out/goals.json" forkhorn-fast meinheld --app hello
    python3 "$here/paired.py" "$out/goals.json" forkhorn-fast bjoern --app todo
  } | tee "$out/goals.paired.md"
fi
if [[ $what == classic || $what == all ]]; then
  "$py" "$peers" "${specs[@]}" \
    --servers gunicorn-sync,gunicorn-meinheld,bjoern,forkhorn-fast \
    --apps todo --workers 9 -c 100 -t 12 -d 5 --rounds 12 \
    --json "$out/classic.json" --markdown "$out/classic.md"
  # bjoern (C, pre-forked with the app preloaded) shows what a server with almost no
  # per-request cost of its own reaches in this configuration.
  {
    python3 "$here/paired.py" "$out/classic.json" forkhorn-fast gunicorn-meinheld
    python3 "$here/paired.py" "$out/classic.json" bjoern gunicorn-meinheld
    python3 "$here/paired.py" "$out/classic.json" forkhorn-fast bjoern
  } | tee "$out/classic.paired.md"
fi
if [[ $what == cores || $what == all ]]; then
  # The classic load with one worker per core, as event-loop workers are meant to run.
  "$py" "$peers" "${specs[@]}" \
    --servers gunicorn-meinheld,forkhorn-fast \
    --apps todo --workers 2 -c 100 -t 12 -d 5 --rounds 5 \
    --json "$out/cores.json" --markdown "$out/cores.md"
fi
if [[ $what == sleep || $what == all ]]; then
  "$py" "$peers" "${specs[@]}" \
    --servers gunicorn-gthread,gunicorn-gevent,gunicorn-eventlet,forkhorn-gthread,forkhorn-gevent,forkhorn-eventlet \
    --apps sleep --workers 2 -c 100 -t 2 -d 10 --rounds 3 \
    --json "$out/sleep.json" --markdown "$out/sleep.md"
fi
