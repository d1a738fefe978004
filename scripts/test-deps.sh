#!/usr/bin/env bash
# Installs what the test suite needs when it is missing:
#   unshare (util-linux) and ip and ss (iproute2) for the tests that run in private network
#   namespaces (RST-free, restart, faults); nft (nftables) for the fault tests' partitions,
#   NAT and dropped packets; rustfmt and clippy for `make test`'s format and lint steps.
# Installs only as root with apt-get; otherwise says what is missing and goes on (the
# namespace tests then skip, or fail when CI is set).
set -euo pipefail

missing=()
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)

if ((${#missing[@]})); then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test-deps: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "test-deps: missing ${missing[*]} (need root and apt-get to install);" \
            "the network-namespace tests will be skipped (or fail under CI)" >&2
    fi
fi

# tests/metrics.rs checks /metrics with a real Prometheus text parser.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
    echo "test-deps: installing the prometheus-client Python package"
    python3 -m pip install --quiet prometheus-client 2>&1 | grep -v "WARNING: Running pip as" || true
    python3 -c 'import prometheus_client'
fi

for component in rustfmt clippy; do
    case $component in
    rustfmt) probe=(cargo fmt --version) ;;
    clippy) probe=(cargo clippy --version) ;;
    esac
    if ! "${probe[@]}" >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            echo "test-deps: installing the $component component"
            rustup component add "$component"
        else
            echo "test-deps: cargo $component is missing and rustup is not available" >&2
            exit 1
        fi
    fi
done
