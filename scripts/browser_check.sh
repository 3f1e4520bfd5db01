#!/usr/bin/env bash
# The earlier service's Vue requester page and admin panel, unchanged, against this app, in a real
# browser (issue #9). Run by a maintainer on demand; CI cannot fetch the pages' sources.
#
#   scripts/browser_check.sh [--out DIR] <sources>
#
# <sources> holds frontend/ and admin/ of the earlier service (a checkout of its repository).
# The script installs what is missing (Debian chromium, the pages' npm packages, playwright-core
# under /tmp), builds both pages against http://127.0.0.1:7071 and serves them on 127.0.0.1:5173
# and :5174, starts a fresh local cluster and the app (local_host) with a timer that never fires,
# then runs scripts/browser_check.mjs: request two keys on the requester page, then log in to the
# admin panel, deny one with a reason and approve the other (checking that the panel's changes carry
# Content-Type: application/json and its own Origin, and that the app refuses them without those
# or without credentials, with no Basic challenge). One line per step; screenshots, the
# pages' API calls (api-log.txt) and the app's log go to DIR (default /tmp/browser-check-<time>).
# Afterwards it lists the request Secrets with kubectl. Everything it started is stopped on exit.
# Exit status: 0 when every step passed.
set -euo pipefail

usage() { echo "usage: $0 [--out DIR] <dir with frontend/ and admin/>" >&2; exit 2; }
out="" src=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) usage ;;
    *) [ -z "$src" ] || usage; src=$1; shift ;;
  esac
done
[ -n "$src" ] || usage
src=$(cd "$src" && pwd)
for app in frontend admin; do
  [ -f "$src/$app/package.json" ] || { echo "browser_check: no $app/package.json in $src" >&2; exit 2; }
done

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${out:-/tmp/browser-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
API_PORT=7071 FRONT_PORT=5173 ADMIN_PORT=5174  # the API URL is baked into the built pages
API="http://127.0.0.1:$API_PORT" FRONT="http://127.0.0.1:$FRONT_PORT" ADMIN="http://127.0.0.1:$ADMIN_PORT"
NAMESPACE=llm-key-requestor
PW_DIR=${BROWSER_CHECK_NODE_DIR:-/tmp/browser-check-node}  # playwright-core lives here, never in the repo
say() { echo "browser_check: $*" >&2; }

work=$(mktemp -d /tmp/browser-check-work.XXXXXX)
pids=() cluster_up=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do  # each server runs in a process group of its own (setsid)
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ -n "$cluster_up" ]; then
    "$repo/.venv/bin/python" "$repo/scripts/local_cluster.py" down --dir "$work/cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  echo "browser_check: screenshots and logs in $out"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_http() {  # url, what, pid: until it answers, the process dies, or 60 s pass
  for _ in $(seq 120); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { say "$2 exited before it answered"; return 1; }
    sleep 0.5
  done
  say "$2 did not answer on $1 within 60 s"; return 1
}
start() {  # log-file, command...: in the background, in a process group of its own
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 < /dev/null &
  pids+=($!)
}

for port in $API_PORT $FRONT_PORT $ADMIN_PORT; do
  port_free "$port" || { say "port $port is in use; stop what listens there first"; exit 1; }
done

# --- 1. Tools ----------------------------------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
  say "installing Debian chromium"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v node >/dev/null && command -v npm >/dev/null || { say "node and npm are needed"; exit 1; }
if [ ! -f "$PW_DIR/node_modules/playwright-core/package.json" ]; then
  say "installing playwright-core into $PW_DIR"
  mkdir -p "$PW_DIR"
  [ -f "$PW_DIR/package.json" ] || echo '{"private": true}' > "$PW_DIR/package.json"
  (cd "$PW_DIR" && npm install --no-audit --no-fund --loglevel=error playwright-core >/dev/null)
fi

# --- 2. The pages, built against the app and served --------------------------------------------
build() {  # app, env var name
  local dir="$src/$1"
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    say "npm install in $dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  say "building $1 with $2=$API"
  (cd "$dir" && env "$2=$API" npx vite build >"$out/build-$1.log" 2>&1) \
    || { say "building $1 failed; see $out/build-$1.log"; tail -20 "$out/build-$1.log" >&2; exit 1; }
  grep -rqF "$API" "$dir/dist/assets" || { say "the $1 build does not carry $API"; exit 1; }
}
build frontend VITE_API_URL
build admin VITE_ADMIN_API_URL
start "$out/preview-frontend.log" env -C "$src/frontend" npx vite preview --host 127.0.0.1 --port "$FRONT_PORT" --strictPort
start "$out/preview-admin.log" env -C "$src/admin" npx vite preview --host 127.0.0.1 --port "$ADMIN_PORT" --strictPort

# --- 3. The app on a fresh cluster -------------------------------------------------------------
cd "$repo"
scripts/setup
say "starting a local cluster in $work/cluster"
cluster_up=1  # set first: `down` after a half-done `up` is harmless
kubeconfig=$(.venv/bin/python scripts/local_cluster.py up --dir "$work/cluster")
export KUBECONFIG=$kubeconfig
.venv/bin/python scripts/ensure_namespace.py "$NAMESPACE"

password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
cat > "$work/local.settings.json" <<EOF
{
  "IsEncrypted": false,
  "Values": {"FUNCTIONS_WORKER_RUNTIME": "python", "LOG_LEVEL": "INFO"},
  "Host": {"CORS": "$FRONT,$ADMIN,http://localhost:$FRONT_PORT,http://localhost:$ADMIN_PORT", "CORSCredentials": false}
}
EOF
cp "$work/local.settings.json" "$out/local.settings.json"
say "starting the app on $API (CORS: $FRONT, $ADMIN)"
# (the password goes in the environment, not on a command line that ps shows)
ADMIN_PASSWORD=$password start "$out/app.log" env KUBECONFIG="$kubeconfig" KUBERNETES_NAMESPACE="$NAMESPACE" \
  CONFIG_FILE=config.yaml ADMIN_USERNAME=admin APPROVAL_SCHEDULE='0 0 0 1 1 *' TEAM_SCHEDULE='0 0 0 1 1 *' \
  LITELLM_API_KEY=sk-browser-check-unused \
  .venv/bin/python -m local_host --port "$API_PORT" --settings "$work/local.settings.json"
wait_http "$API/health" "the app" "${pids[-1]}" || { tail -30 "$out/app.log" >&2; exit 1; }
wait_http "$FRONT/" "the requester page's server" "${pids[0]}"
wait_http "$ADMIN/" "the admin panel's server" "${pids[1]}"
say "app: $(curl -fsS "$API/health")"

# --- 4. The browser ----------------------------------------------------------------------------
say "running scripts/browser_check.mjs (screenshots to $out)"
status=0
# In the background and waited for, so that Ctrl-C or a TERM stops it and the trap cleans up.
ADMIN_USERNAME=admin ADMIN_PASSWORD="$password" setsid node "$repo/scripts/browser_check.mjs" \
  --frontend "$FRONT/" --admin "$ADMIN/" --api "$API" --out "$out" --pw-dir "$PW_DIR" &
pids+=($!)
wait "${pids[-1]}" || status=$?

# --- 5. What the Kubernetes API holds ----------------------------------------------------------
echo "kubectl -n $NAMESPACE get secrets -l app.kubernetes.io/component=llm-key-request -L request-state:"
kubectl -n "$NAMESPACE" get secrets -l app.kubernetes.io/component=llm-key-request -L request-state | tee "$out/kubectl.txt" || status=1
kubectl -n "$NAMESPACE" get secrets -l app.kubernetes.io/component=llm-key-request \
  -o jsonpath='{range .items[*]}{.metadata.name}{"  state="}{.metadata.labels.request-state}{"  annotations: "}{.metadata.annotations}{"\n"}{end}' \
  > "$out/kubectl-annotations.txt" || true
if [ "$status" -eq 0 ] && [ -f "$out/requests.json" ]; then
  for pair in "first denied" "second approved"; do
    set -- $pair
    id=$(node -e "console.log(require('$out/requests.json').$1.request_id)")
    got=$(kubectl -n "$NAMESPACE" get secret "llm-key-request-$id" -o jsonpath='{.metadata.labels.request-state}')
    if [ "$got" = "$2" ]; then echo "ok   kubernetes: llm-key-request-$id request-state=$got"
    else echo "FAIL kubernetes: llm-key-request-$id request-state=$got, expected $2"; status=1; fi
  done
fi
[ "$status" -eq 0 ] && echo "browser_check: all steps passed" || echo "browser_check: FAILED (exit $status)"
exit "$status"
