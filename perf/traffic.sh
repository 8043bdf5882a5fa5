# Shared by perf/order and perf/pgo (sourced, not run): one NGINX backend, and every
# perf/ scenario's kind of traffic through one Strait. Needs nginx, h2load, curl,
# python3.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# traffic_plugin: the proxy-wasm module perf/run measures (perf/plugins/header), built
# where perf/run builds it (perf/install.py), as an absolute path; nothing when it
# cannot be built (no wasm32-wasip1 target).
traffic_plugin() {
  python3 -c 'import sys; sys.path.insert(0, "perf"); import install; print(install.build_plugin("header"))' \
    2>/dev/null | tail -1 | xargs -r realpath
}

# traffic_setup: a temporary directory ($tmp, removed on exit) with the backend
# listening on $backend (`/` answers "ok", `/64k` 64 KiB, POST included).
traffic_setup() {
  for tool in nginx h2load curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
  done
  tmp=$(mktemp -d)
  trap 'kill $(cat "$tmp/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$tmp"' EXIT
  backend=$(free_port)
  chmod 755 "$tmp"  # nginx workers run as nobody and read www/
  mkdir -p "$tmp/t" "$tmp/www"
  head -c 65536 /dev/zero | tr '\0' x > "$tmp/www/64k"
  head -c 4096 /dev/zero | tr '\0' x > "$tmp/body4k"
  cat > "$tmp/nginx.conf" <<NG
worker_processes 1; daemon on; pid $tmp/nginx.pid; error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $tmp/t; proxy_temp_path $tmp/t;
  fastcgi_temp_path $tmp/t; uwsgi_temp_path $tmp/t; scgi_temp_path $tmp/t;
  keepalive_requests 10000000; keepalive_timeout 600s; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$backend;
    location = / { return 200 "ok\n"; }
    location = /64k { root $tmp/www; error_page 405 =200 \$uri; } } }
NG
  nginx -p "$tmp" -c "$tmp/nginx.conf"
}

# traffic_run NAME TEMPLATE SCALE PLUGIN COMMAND...: runs `COMMAND -c CONFIG ...` (a
# Strait binary, or a wrapper and its arguments before one) on perf/configs/TEMPLATE
# with one worker, sends it SCALE times the base traffic, stops it with the admin's
# quitquitquit (a clean exit: profilers write their data) and waits for it.
traffic_run() {
  local name=$1 tpl=$2 scale=$3 plugin=$4 port admin pid
  shift 4
  port=$(free_port)
  sed -e "s/{{port}}/$port/; s/{{backend_port}}/$backend/; s#{{wasm}}#$plugin#" \
    "perf/configs/$tpl" > "$tmp/$name.yaml"
  # An empty compiled-module cache: the plugin is compiled at start, as on a first
  # deployment, whatever an earlier run left in ~/.cache/strait/wasm.
  STRAIT_WASM_CACHE_DIR="$tmp/wasm-cache-$name" "$@" -c "$tmp/$name.yaml" --concurrency 1 \
    --log-level error --admin-address-path "$tmp/$name.admin" > "$tmp/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    [ -s "$tmp/$name.admin" ] && curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
  local url=http://127.0.0.1:$port n=$((4000 * scale))
  h2load --h1 -n "$n" -c 10 "$url/" > /dev/null
  h2load -n "$n" -c 10 -m 10 "$url/" > /dev/null
  if [ "$name" = plain ]; then
    h2load --h1 -n $((400 * scale)) -c 4 -d "$tmp/body4k" "$url/64k" > /dev/null
    h2load -n $((400 * scale)) -c 4 -m 10 "$url/64k" > /dev/null
    for _ in $(seq 1 $((50 * scale))); do curl -s -o /dev/null -H 'Connection: close' "$url/"; done
    # Idle keep-alive connections across a few heartbeats (buffers released, pool parked).
    (sleep 2; echo) | python3 perf/idle_client.py "$port" 200 > /dev/null
  fi
  admin=$(cat "$tmp/$name.admin")
  curl -s -o /dev/null "http://$admin/stats" || true
  curl -s -X POST -o /dev/null "http://$admin/quitquitquit" || true
  wait "$pid" || true
}
