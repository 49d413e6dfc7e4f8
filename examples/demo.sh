#!/usr/bin/env bash
# The quick-start demo: run `ccm agent` with an embedded etcd and nothing in
# its --config-dir, push the example configuration as a release and promote
# it, load the sample objects and watch files appear under ./demo-root. The
# agent keeps running until Ctrl-C (DEMO_EXIT=1: stop once converged).
set -euo pipefail
cd "$(dirname "$0")/.."
ccm=bin/ccm
# The agent's --config-dir is empty: what it runs comes from the release.
export CCM_CONFIG_DIR=demo-config CCM_ROOT=demo-root CCM_STATE_DIR=demo-state CCM_RELEASE_DIR=demo-releases \
  CCM_ENDPOINTS=127.0.0.1:23790 CCM_NODE=demo CCM_LABEL=role=web CCM_LOG_FORMAT=console
mkdir -p demo-root/etc demo-config
# The example creates its customers' users with useradd --prefix demo-root:
# the root needs its own account files, which start with the base system's.
if [ ! -e demo-root/etc/passwd ]; then
  printf 'root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > demo-root/etc/passwd
  printf 'root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n' > demo-root/etc/group
  printf 'root:*:1::::::\nwww-data:*:1::::::\nnobody:*:1::::::\n' > demo-root/etc/shadow
  printf 'root:*::\nwww-data:*::\nnogroup:*::\n' > demo-root/etc/gshadow
  chmod 600 demo-root/etc/shadow demo-root/etc/gshadow
fi
# A declared user's shell must be one of the root's etc/shells.
[ -e demo-root/etc/shells ] || printf '/bin/sh\n/bin/bash\n' > demo-root/etc/shells
# The example's checks run the real nginx -t and php-fpm -t; the demo needs
# neither installed, so it skips them (make test runs them for real).
export CHECK_SKIP=1

"$ccm" agent --embedded-etcd demo-etcd --debounce 1s --metrics-addr 127.0.0.1:23799 2> demo-agent.log &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent 2>/dev/null; echo "agent stopped (log: demo-agent.log)"' EXIT

echo "== waiting for the agent and its embedded etcd"
ready() { if command -v curl >/dev/null; then curl -sf 127.0.0.1:23799/readyz >/dev/null 2>&1; else "$ccm" object list >/dev/null 2>&1; fi; }
for _ in $(seq 100); do
  ready && break
  kill -0 $agent 2>/dev/null || { cat demo-agent.log; exit 1; }
  sleep 0.2
done

echo "== ccm release push examples/ccm, then ccm release promote"
id=$("$ccm" release push examples/ccm --message "the example")
"$ccm" release promote "$id" --message "make demo"
"$ccm" release current

echo "== loading examples/objects.json (checked against the release's schemas)"
"$ccm" object import examples/objects.json

echo "== waiting for the agent to converge"
for _ in $(seq 150); do
  if [ -f demo-root/etc/nginx/sites-enabled/shop.conf ] && "$ccm" plan --log-level error >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done
"$ccm" plan --log-level error
echo
"$ccm" status
echo
if [ "$(id -u)" = 0 ]; then
  echo "== a node action: ccm action run site-info --node demo --param site=shop"
  "$ccm" action run site-info --node demo --param site=shop || true
  echo
fi
echo "== files under ./demo-root"
find demo-root -type f ! -name '*-' | sort
echo
echo "== the customers' users, made by useradd --prefix demo-root, and their homes"
grep -E '^(alice|bob):' demo-root/etc/passwd || echo "(none: useradd needs root; ccm status lists the users it quarantined)"
ls -ln demo-root/home 2>/dev/null || true
echo
if command -v curl >/dev/null; then
  echo "== metrics: curl 127.0.0.1:23799/metrics"
  curl -s 127.0.0.1:23799/metrics | grep -E '^ccm_(runs_total|changed_files_total|halted|quarantined_objects|ready)'
fi

if [ "${DEMO_EXIT:-}" = 1 ]; then
  exit 0
fi
cat <<'MSG'

The agent is running. In another terminal, try:
  CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm object delete sites blog     # vhost and pool disappear
  cp -r examples/ccm /tmp/next && $EDITOR /tmp/next/templates/vhost.conf.tmpl
  CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm release push /tmp/next       # prints the new release's id
  CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm plan --cluster --release ID  # every node's diff, nothing applied
  CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm release promote ID           # then: ccm release rollback
  echo '{"user":"bob","domains":["new.example"]}' | CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm object put sites new
  sudo CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm action run site-info --node demo --param site=blog
  CCM_ENDPOINTS=127.0.0.1:23790 bin/ccm dashboard                    # then open http://127.0.0.1:9320/
  tail -f demo-agent.log
Ctrl-C stops it.
MSG
wait $agent
