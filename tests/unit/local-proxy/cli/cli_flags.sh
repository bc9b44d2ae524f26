#!/bin/sh
# cli_flags.sh KBRIDGE: run the built kbridge with bad command lines; each must
# exit 2 with one line on stderr naming the flag. Also the happy paths that need
# no agent: version, help, certs init/issue (file modes), and a proxy whose
# certificate is missing (exit 1, pointing at `kbridge certs issue`).
set -u
kb=$1
tmp=$(mktemp -d /tmp/kbcli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0

# expect STATUS SUBSTRING ARGS...: exit status and a stderr substring.
expect() {
  want=$1 frag=$2
  shift 2
  "$kb" "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  lines=$(wc -l <"$tmp/err")
  if [ "$got" -ne "$want" ] || { [ -n "$frag" ] && ! grep -qF -- "$frag" "$tmp/err"; } ||
    { [ "$want" -eq 2 ] && [ "$lines" -ne 1 ]; }; then
    echo "FAIL: kbridge $*: exit $got (want $want), stderr:" >&2
    cat "$tmp/err" >&2
    echo "  (wanted the substring: $frag)" >&2
    fails=$((fails + 1))
  else
    passes=$((passes + 1))
  fi
}

mkdir "$tmp/empty"
ok="--agent 127.0.0.1:1 --tls-dir $tmp/empty --route-as alice"
expect 2 'kbridge: --local-port: expected a port 1-65535, got "abc"' proxy $ok --local-port abc
expect 2 '--local-port: expected a port 1-65535, got "0"' proxy $ok --local-port 0
expect 2 '--local-port: required' proxy $ok
expect 2 '--agent: expected HOST:PORT, got "nowhere"' proxy --agent nowhere --tls-dir "$tmp" --route-as a --local-port 1
expect 2 '--agent: required' proxy --tls-dir "$tmp" --route-as a --local-port 1
expect 2 '--tls-dir: expected a directory, got "/nonexistent"' proxy --agent h:1 --tls-dir /nonexistent --route-as a --local-port 1
expect 2 '--route-as: expected a route key' proxy --agent h:1 --tls-dir "$tmp" --route-as Alice --local-port 1
expect 2 '--tunnels: expected a number 1-64, got "0"' proxy $ok --local-port 1 --tunnels 0
expect 2 '--tunnels: expected a number 1-64, got "x"' proxy $ok --local-port 1 --tunnels x
expect 2 '--forward: expected LADDR:LPORT=HOST:PORT' proxy $ok --local-port 1 --forward 127.0.0.1:0
expect 2 '--forward: expected LADDR:LPORT=HOST:PORT' proxy $ok --local-port 1 --forward 127.0.0.1:0=svc
expect 2 '--log-level: expected error, warn, info or debug, got "loud"' proxy $ok --local-port 1 --log-level loud
expect 2 '--local-host: expected a host name or IP address' proxy $ok --local-port 1 --local-host ''
expect 2 '--exclusive: takes no value' proxy $ok --local-port 1 --exclusive=yes
expect 2 '--bogus: unknown flag for `kbridge proxy`' proxy $ok --local-port 1 --bogus
expect 2 'unexpected argument "stray"' proxy $ok --local-port 1 stray
expect 2 'DIR: required' certs init
expect 2 '--key: required' certs issue "$tmp"
expect 2 '--key: expected a route key' certs issue "$tmp" --key 'a_b'
expect 2 'DIR: expected a directory, got "/nonexistent"' certs issue /nonexistent --key a
expect 2 '--force: takes no value' certs init "$tmp/x" --force=1
expect 2 'certs: expected init or issue, got "renew"' certs renew
expect 2 'unknown command "frobnicate"' frobnicate
expect 2 'version: unexpected argument' version now

expect 0 '' version
grep -q '^kbridge [0-9]' "$tmp/out" || { echo "FAIL: version output: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
expect 0 '' help
grep -q 'certs issue' "$tmp/out" || { echo "FAIL: help lists no certs issue" >&2; fails=$((fails + 1)); }
expect 0 '' proxy --help
grep -q -- '--local-host HOST' "$tmp/out" || { echo "FAIL: proxy --help" >&2; fails=$((fails + 1)); }
expect 0 '' help certs init

# certs: create, refuse to overwrite, issue; key files 0600, directory 0700.
expect 0 '' certs init "$tmp/tls"
expect 1 'already exists' certs init "$tmp/tls"
expect 0 '' certs init "$tmp/tls" --force --ed25519
expect 0 '' certs issue "$tmp/tls" --key alice
expect 1 'reserved' certs issue "$tmp/tls" --key ca
for f in ca.key agent.key alice.key; do
  m=$(stat -c %a "$tmp/tls/$f")
  [ "$m" = 600 ] || { echo "FAIL: $f mode $m" >&2; fails=$((fails + 1)); }
done
m=$(stat -c %a "$tmp/tls")
[ "$m" = 700 ] || { echo "FAIL: dir mode $m" >&2; fails=$((fails + 1)); }

# proxy with a tls dir lacking bob's certificate: exit 1 with the fix in the message.
expect 1 'kbridge certs issue' proxy --agent 127.0.0.1:1 --tls-dir "$tmp/tls" --route-as bob --local-port 1

# connect: the agent pod's flags and kbridge.yaml are checked before the cluster
# is contacted (no kubeconfig is read: KUBECONFIG points nowhere).
c="connect --service api --local-port 5000 --kubeconfig $tmp/none"
expect 2 '--toleration: expected KEY[=VALUE][:EFFECT]' $c --toleration 'a=b:Sometimes'
expect 2 '--agent-limits: cpu: "lots" is not a Kubernetes quantity' $c --agent-limits cpu=lots
expect 2 '--agent-label: "kbridge.dev/agent" is kbridge' $c --agent-label kbridge.dev/agent=x
expect 2 '--node-selector: expected KEY=VALUE, got "ssd"' $c --node-selector ssd
expect 2 '--agent-requests: memory=1Gi is more than --agent-limits memory=64Mi' $c --agent-requests memory=1Gi --agent-limits memory=64Mi
expect 2 '--image-pull-secret: expected the name of a Secret' $c --image-pull-secret 'Reg_Cred'
printf 'timeout: 30\nnode-selectr: {disk: ssd}\n' >"$tmp/kb.yaml"
expect 2 'kb.yaml:2: "node-selectr" is not an option of `kbridge connect`' $c --config "$tmp/kb.yaml"
printf 'timeout: 3\n' >"$tmp/kb.yaml"
expect 2 'kb.yaml:1: --timeout: expected a number 5-3600, got "3"' $c --config "$tmp/kb.yaml"
expect 2 '--config: '"$tmp"'/missing.yaml: No such file' $c --config "$tmp/missing.yaml"
mkdir "$tmp/proj" && printf 'agent-limits:\n  cpu: lots\n' >"$tmp/proj/kbridge.yaml"
cd "$tmp/proj" && expect 2 '--agent-limits: cpu: "lots"' $c
cd "$tmp"
# kbridge.yaml's session keys: service, local-port, route-as and a forward list
# stand for the flags (no --service or --local-port given here); the env:
# overrides' references are checked with the file's line.
mkdir "$tmp/sess" && cat >"$tmp/sess/kbridge.yaml" <<'YAML'
service: api
local-port: 5000
route-as: alice-with-a-route-key-longer-than-connect-allows-for-takeovers
forward:
  - 127.0.0.1:0=store:8080
  - 127.0.0.1:0=db.shop:5432
env:
  DB: $(forward:db.shop:5432)
  STORE: $(forward:store:9999)
YAML
k="--kubeconfig $tmp/none"
# (in this shell, not a subshell: expect counts the results)
cd "$tmp/sess" && expect 2 '--route-as: "alice-with-a-route-key-longer-than-connect-allows-for-takeovers" has 63 characters' connect $k
cd "$tmp/sess" && expect 2 'kbridge.yaml:9: env STORE: $(forward:store:9999): no --forward to store:9999 (forwards to: store:8080, db.shop:5432)' connect $k --route-as alice
# the command line wins: its --forward list replaces the file's, its --env the file's variable
cd "$tmp/sess" && expect 2 'kbridge.yaml:8: env DB: $(forward:db.shop:5432): no --forward to db.shop:5432 (forwards to: store:9999)' connect $k --route-as alice --forward 127.0.0.1:0=store:9999
cd "$tmp/sess" && expect 1 "$tmp/none" connect $k --route-as alice --env STORE=x
cd "$tmp/sess" && expect 2 '--env X: $(forward:a:1): no --forward to a:1' connect $k --route-as alice --env STORE=x --env 'X=$(forward:a:1)'
cd "$tmp"
cat >"$tmp/kb.yaml" <<'YAML'
env:
  OK: "pa$$word"
  BAD: $(service:store)
YAML
expect 2 'kb.yaml:3: --env: BAD: $(service:store): unknown reference kind "service" (expected services, forward, volumes or env)' $c --config "$tmp/kb.yaml"
printf 'env:\n  HOME2: ${HOME}/x\n' >"$tmp/kb.yaml"
expect 2 "kb.yaml:2: --env: HOME2: \"\${\" at offset 0: a '\$' starts a reference" $c --config "$tmp/kb.yaml"
printf 'env:\n  A: b\n  URL: http://$(services:store\n' >"$tmp/kb.yaml"
expect 2 'kb.yaml:3: --env: URL: "$(services:store" at offset 7: a reference not closed' $c --config "$tmp/kb.yaml"
printf 'no-services: true\nenv:\n  A: b\n  URL: http://$(services:store:http)\n' >"$tmp/kb.yaml"
expect 2 'kb.yaml:4: env URL: $(services:store:http): --no-services is given' $c --config "$tmp/kb.yaml"
printf 'env:\n  A: b\n  B: [1, 2]\n' >"$tmp/kb.yaml"
expect 2 'kb.yaml:3: env: expected a mapping of names to plain values' $c --config "$tmp/kb.yaml"
expect 2 '--env: expected NAME=VALUE, got "A" (missing' $c --env A
expect 0 '' connect --help

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
