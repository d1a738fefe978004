#!/usr/bin/env bash
# Demo: four masternodes on 127.0.0.2-127.0.0.5 (P2P port 24100, status port 8332 on each
# address) form a full mesh. Prints every node's /consensus_info and /peers, stops the nodes
# it started, and exits 0 only if the mesh formed: every node reports
# active_masternodes=4 and connected_peers=3.
#
# Environment: DEMO_DEADLINE (seconds to wait for the mesh, default 30),
#              DEMO_KEEP_LOGS=1 (keep the node logs even on success),
#              DEMO_HOSTS="IP IP ..." (other loopback addresses, when those are taken).
set -euo pipefail

cd "$(dirname "$0")/.."

read -r -a HOSTS <<<"${DEMO_HOSTS:-127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5}"
P2P_PORT=24100
RPC_PORT=8332
DEADLINE=${DEMO_DEADLINE:-30}
BIN=target/release/timed
CLI=target/release/time-cli

echo "==> building (cargo build --release)"
cargo build --release

# --- helpers ----------------------------------------------------------------------------

# Whether something listens on IP:PORT.
listening() {
    local ip=$1 port=$2
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htln "src $ip:$port" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null
    fi
}

# GET http://IP:PORT/PATH, body on stdout; fails if unreachable.
http_get() {
    local url="http://$1:$RPC_PORT$2"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 "$url"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$url"
    else
        echo "demo: needs curl or python3 to query the nodes" >&2
        return 1
    fi
}

# Pretty JSON from stdin: jq, else python3 -m json.tool, else as it is.
pretty() {
    if command -v jq >/dev/null 2>&1; then
        jq .
    elif command -v python3 >/dev/null 2>&1; then
        python3 -m json.tool
    else
        cat
        echo
    fi
}

# The number after "KEY": in a flat JSON object on stdin.
field() {
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p"
}

# --- preflight --------------------------------------------------------------------------

busy=()
for ip in "${HOSTS[@]}"; do
    for port in $P2P_PORT $RPC_PORT; do
        if listening "$ip" "$port"; then busy+=("$ip:$port"); fi
    done
done
if ((${#busy[@]})); then
    echo "demo: address(es) already in use: ${busy[*]}" >&2
    echo "demo: stop whatever listens there (another demo or timed?) and try again" >&2
    exit 1
fi

# --- start ------------------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/timed-demo.XXXXXX")
# An empty configuration: /etc/timed/timed.conf, if installed, must not leak in.
printf '# timed demo: everything is on the command line\n' >"$WORK/demo.conf"

PIDS=()
ok=0
cleanup() {
    local pid left
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Each node exits within 5 s of SIGTERM; anything left after that gets SIGKILL.
    for _ in $(seq 50); do
        left=0
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then left=1; fi
        done
        ((left)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "demo: node $pid did not stop within 5 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if ((ok)) && [[ ${DEMO_KEEP_LOGS:-0} != 1 ]]; then
        rm -rf "$WORK"
    else
        echo "demo: node logs kept in $WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MASTERNODES=()
for ip in "${HOSTS[@]}"; do MASTERNODES+=("--masternode=$ip:$P2P_PORT"); done

echo "==> starting ${#HOSTS[@]} masternodes (logs in $WORK)"
for ip in "${HOSTS[@]}"; do
    "$BIN" --conf "$WORK/demo.conf" \
        --listen="$ip:$P2P_PORT" --rpclisten="$ip:$RPC_PORT" \
        "${MASTERNODES[@]}" \
        --pinginterval=5s --reconnectmin=250ms --reconnectmax=5s \
        2>"$WORK/$ip.log" &
    PIDS+=($!)
    echo "    $ip:$P2P_PORT  pid $!  status http://$ip:$RPC_PORT"
done

# --- wait for the mesh ------------------------------------------------------------------

want_active=${#HOSTS[@]}
want_peers=$((${#HOSTS[@]} - 1))
echo "==> waiting up to ${DEADLINE}s for every node to report" \
    "active_masternodes=$want_active, connected_peers=$want_peers"
start=$SECONDS
formed=0
while ((SECONDS - start < DEADLINE)); do
    all=1
    for i in "${!HOSTS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            echo "demo: the node on ${HOSTS[$i]} exited; its log:" >&2
            cat "$WORK/${HOSTS[$i]}.log" >&2
            exit 1
        fi
        info=$(http_get "${HOSTS[$i]}" /consensus_info 2>/dev/null) || { all=0; break; }
        active=$(field active_masternodes <<<"$info")
        peers=$(field connected_peers <<<"$info")
        if [[ $active != "$want_active" || $peers != "$want_peers" ]]; then
            all=0
            break
        fi
    done
    if ((all)); then
        formed=1
        break
    fi
    sleep 0.2
done

# --- report -----------------------------------------------------------------------------

for ip in "${HOSTS[@]}"; do
    echo
    echo "==> $ip /consensus_info"
    http_get "$ip" /consensus_info | pretty || echo "(unreachable)"
    echo "==> $ip /peers"
    http_get "$ip" /peers | pretty || echo "(unreachable)"
done

if [[ -x $CLI ]]; then
    urls=()
    for ip in "${HOSTS[@]}"; do urls+=("http://$ip:$RPC_PORT"); done
    echo
    echo "==> time-cli matrix"
    "$CLI" matrix "${urls[@]}" || true
fi

echo
if ((formed)); then
    echo "demo: mesh formed in $((SECONDS - start))s: every node has" \
        "active_masternodes=$want_active and connected_peers=$want_peers"
    ok=1
    exit 0
fi
echo "demo: the mesh did not form within ${DEADLINE}s" >&2
exit 1
