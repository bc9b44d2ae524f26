#!/bin/sh
# run_cluster_test.sh TEST_BINARY CLUSTER_DIR: bring up the local cluster
# "kube-client-test" (tests/cluster/up), run the kube client test against it,
# tear it down (also when the test fails). Exit status of the test.
set -u
bin=$1
cluster=$2
name=kube-client-test
out=$("$cluster/up" --name "$name") || { echo "cluster up failed" >&2; exit 1; }
admin=$(printf '%s\n' "$out" | tail -n 1)
state=$(dirname "$admin")
trap '"$cluster/down" --name "$name" >/dev/null 2>&1' EXIT INT TERM
token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"]["admin"])' "$state/cluster.json")
"$bin" "$admin" "$state/restricted.kubeconfig" "$token"
