#!/usr/bin/env python3
"""Every --env-format read back by the programs that consume it (issue 9).

    test_envfmt.py --tool envfmt_write_tool [--kbridge BIN]

Hostile values (line breaks, both quotes, $ and ${...}, backslashes, '#',
blanks, empty, UTF-8 of every length, YAML's odd line breaks, bytes that are
not UTF-8) and 300 random ones are written by local-proxy/envfmt.c (through
tests/unit/local-proxy/envfmt/envfmt_write_tool) and read back:

    json     Python's json: env equal, secrets listed in order
    sh       `sh -c '. FILE; env -0'` (dash, and bash when present) and
             Python's shlex: equal byte for byte
    dotenv   python-dotenv (Debian's python3-dotenv; interpolate=False for all,
             the default interpolation for values without ${...}), and npm's
             dotenv when node can require it (NODE_PATH or KBRIDGE_NPM_DOTENV)
    compose  PyYAML, then compose's $$ -> $: equal
    docker   the rules of docker CLI's opts/file.go (no daemon here to ask):
             equal

A variable a format leaves out must be one it cannot carry (checked against
the format's documented limits), named on stderr; all others must read back
exactly. With --kbridge: `kbridge env` refuses a bad --env-format.
"""
import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile

ARGS = None
TMP = tempfile.mkdtemp(prefix="kbridge-envfmt-")
FAILS = []


def check(cond, msg):
    if cond:
        print("ok: " + msg, flush=True)
    else:
        print("FAIL: " + msg, flush=True)
        FAILS.append(msg)


# (name, value bytes, secret)
HOSTILE = [
    ("PLAIN", b"hello", False),
    ("EMPTY", b"", True),
    ("SPACES", b"  lead and trail  ", False),
    ("NEWLINE", b"line1\nline2\n", True),
    ("CRLF", b"a\r\nb\r", False),
    ("SQUOTE", b"it's", False),
    ("DQUOTE", b'say "hi"', False),
    ("BOTHQ", b"it's \"x\"", False),
    ("DOLLAR", b"$HOME $1 $$ ${HOME} ${X:-d} $(id) `id`", False),
    ("BACKSLASH", b"C:\\new\\table \\n \\\\server\\share", True),
    ("TRAILBS", b"ends with \\", False),
    ("HASH", b"#not a comment # x", False),
    ("UNICODE", "h\u00e9llo \u20ac \U0001F600 \u4e2d\u6587".encode(), False),
    ("YAMLBREAKS", "\u0085\u2028\u2029\ufeff\u00a0\ufffe".encode(), False),
    ("CONTROLS", b"\x01\x07\x08\x0b\x0c\x1b\x7f\t", False),
    ("PEM", b"-----BEGIN KEY-----\nMIIB+/=\n-----END KEY-----\n", True),
    ("JSONV", b'{"a": "it\'s", "b": [1, 2]}', False),
    ("NOFORM", b"it's \"x\"\nline", False),
    ("NOTUTF8", b"\xff\xfe\xc0\xaf", True),
    ("my.dotted-name", b"dots", False),
    ("9LEADING_DIGIT", b"x", False),
    ("LONGV", b"x" * 100000, False),
]

ALPHABET = ["a", "Z", "0", " ", "\t", "\n", "\r", "'", '"', "`", "\\", "$", "{", "}", "#", "=",
            ":", "-", "\u00e9", "\u20ac", "\U0001F600", "\u2028", "\x85", "\x01", "\x7f"]


def random_vars():
    rnd = random.Random(9)
    out = []
    for i in range(300):
        v = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 12)))
        out.append(("R%03d" % i, v.encode(), rnd.random() < 0.3))
    return out


VARS = HOSTILE + random_vars()


def write(fmt, vars_):
    rec = b"".join(n.encode() + b"\0" + v + b"\0" + (b"1" if s else b"0") + b"\0"
                   for n, v, s in vars_)
    r = subprocess.run([ARGS.tool, fmt], input=rec, capture_output=True)
    if r.returncode != 0:
        raise SystemExit("envfmt_write_tool %s failed: %s" % (fmt, r.stderr.decode()))
    left = set()
    for line in r.stderr.decode().splitlines():
        kind, rest = line.split(" ", 1)
        if kind == "left-out":
            left.add(rest.split("\t")[0])
    path = os.path.join(TMP, "env." + fmt)
    with open(path, "wb") as f:
        f.write(r.stdout)
    return path, left


def utf8(b):
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


def expected(vars_, left):
    return {n: v for n, v, _ in vars_ if n not in left}


def compare(fmt, reader, got, want):
    """got/want: {name: bytes}. Equal, or the first differences printed."""
    bad = [n for n in want if got.get(n) != want[n]]
    extra = [n for n in got if n not in want]
    for n in bad[:5]:
        print("  %s %s: wrote %r, read %r" % (fmt, n, want[n][:80], (got.get(n) or b"")[:80]))
    check(not bad and not extra,
          "%s read back by %s: %d variables equal%s" % (
              fmt, reader, len(want), (" (differ: %s, extra: %s)" % (bad[:8], extra[:8]))
              if bad or extra else ""))


# ---- json ----

def test_json():
    path, left = write("json", VARS)
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    check(left == {n for n, v, _ in VARS if not utf8(v)},
          "json leaves out only the values that are not UTF-8: %s" % sorted(left))
    compare("json", "Python json", {k: v.encode() for k, v in doc["env"].items()},
            expected(VARS, left))
    check(doc["secrets"] == [n for n, _, s in VARS if s and n not in left],
          "json lists the secrets, in order (%d)" % len(doc["secrets"]))
    check(list(doc) == ["env", "secrets"], "json has env and secrets only")


# ---- sh ----

def sh_name(n):
    return n[:1].isascii() and (n[0].isalpha() or n[0] == "_") and \
        all(c.isascii() and (c.isalnum() or c == "_") for c in n)


def test_sh():
    path, left = write("sh", VARS)
    check(left == {n for n, _, _ in VARS if not sh_name(n)},
          "sh leaves out only names a shell cannot take: %s" % sorted(left))
    want = expected(VARS, left)
    shells = ["sh"] + (["bash"] if shutil.which("bash") else [])
    for shell in shells:
        r = subprocess.run([shell, "-c", '. "$1" && env -0', "sh", path], capture_output=True,
                           env={"PATH": os.environ["PATH"]})
        check(r.returncode == 0, "%s sources the file (%s)" % (shell, r.stderr.decode()[:200]))
        got = {}
        for item in r.stdout.split(b"\0"):
            if b"=" in item:
                k, v = item.split(b"=", 1)
                got[k.decode()] = v
        got = {k: v for k, v in got.items() if k in want or k in left}
        compare("sh", shell, got, want)
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    toks = shlex.split(text, posix=True)
    got = {}
    for i in range(0, len(toks), 2):
        if toks[i] != "export":
            check(False, "shlex: expected export, got %r" % toks[i][:40])
            return
        k, v = toks[i + 1].split("=", 1)
        got[k] = v.encode("utf-8", "surrogateescape")
    compare("sh", "Python shlex", got, want)


# ---- dotenv ----

PY_DOTENV = r'''
import json, sys
from dotenv import dotenv_values
out = {}
for interp in (False, True):
    out[str(interp)] = dotenv_values(sys.argv[1], interpolate=interp)
print(json.dumps(out))
'''

NPM_DOTENV = r'''
const d = require('dotenv');
process.stdout.write(JSON.stringify(d.parse(require('fs').readFileSync(process.argv[1]))));
'''


def python_with_dotenv():
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-c", "import dotenv"],
                                                 capture_output=True).returncode == 0:
            return py
    return None


def dotenv_carriable(v):
    """What a value dotenv leaves out must have: something single quotes
    cannot carry (a ', a carriage return, a backslash) and something double
    quotes cannot (a ", a backslash)."""
    return not ((b"'" in v or b"\r" in v or b"\\" in v) and (b'"' in v or b"\\" in v))


def test_dotenv():
    path, left = write("dotenv", VARS)
    import re
    bad_names = {n for n, _, _ in VARS if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)}
    check(bad_names <= left, "dotenv leaves out the names npm's dotenv cannot read")
    wrongly = [n for n, v, _ in VARS if n in left and n not in bad_names and utf8(v) and
               dotenv_carriable(v)]
    check(not wrongly, "dotenv leaves out only values with ' or \\r and \" or \\ (%d of %d left out)"
          % (len(left), len(VARS)))
    check("NOFORM" in left and "PEM" not in left and "BOTHQ" not in left,
          "dotenv: NOFORM left out, PEM and BOTHQ written")
    want = expected(VARS, left)
    py = python_with_dotenv()
    check(py is not None, "python-dotenv is installed (scripts/install-deps --test)")
    if py:
        r = subprocess.run([py, "-c", PY_DOTENV, path], capture_output=True, text=True)
        check(r.returncode == 0, "python-dotenv parses the file (%s)" % r.stderr[-300:])
        out = json.loads(r.stdout)
        compare("dotenv", "python-dotenv (interpolate=False)",
                {k: v.encode() for k, v in out["False"].items()}, want)
        plain = {n: v for n, v in want.items() if not re.search(rb"\$\{[^}]*\}", v)}
        compare("dotenv", "python-dotenv (default interpolation, values without ${...})",
                {k: v.encode() for k, v in out["True"].items() if k in plain}, plain)
    node = shutil.which("node")
    env = dict(os.environ)
    if os.environ.get("KBRIDGE_NPM_DOTENV"):
        env["NODE_PATH"] = os.environ["KBRIDGE_NPM_DOTENV"]
    if node and subprocess.run([node, "-e", "require('dotenv')"], env=env,
                               capture_output=True).returncode == 0:
        r = subprocess.run([node, "-e", NPM_DOTENV, path], env=env, capture_output=True,
                           text=True)
        check(r.returncode == 0, "npm dotenv parses the file (%s)" % r.stderr[-300:])
        compare("dotenv", "npm dotenv", {k: v.encode() for k, v in json.loads(r.stdout).items()},
                want)
    else:
        print("skip: npm dotenv not found (set KBRIDGE_NPM_DOTENV to a node_modules holding it)")


# ---- compose ----

def test_compose():
    path, left = write("compose", VARS)
    check(left == {n for n, v, _ in VARS if not utf8(v)},
          "compose leaves out only the values that are not UTF-8: %s" % sorted(left))
    try:
        import yaml
    except ImportError:
        check(False, "PyYAML is installed (python3-yaml)")
        return
    with open(path, "rb") as f:
        doc = yaml.safe_load(f.read().decode())
    check(list(doc) == ["environment"], "compose: one environment: mapping")
    vals = doc["environment"]
    check(all(isinstance(k, str) and isinstance(v, str) for k, v in vals.items()),
          "compose: every name and value is a YAML string")
    # Compose's interpolation: $$ is a literal $, and no other $ may remain.
    check(all("$" not in v.replace("$$", "") for v in vals.values()),
          "compose: every $ doubled (nothing for compose to interpolate)")
    compare("compose", "PyYAML + compose's $$", {k: v.replace("$$", "$").encode()
                                                 for k, v in vals.items()}, expected(VARS, left))


# ---- docker ----

def docker_read(data):
    """docker CLI opts/file.go parseKeyValueFile: lines by bufio.ScanLines (a
    final \\r dropped), UTF-8 required, leading blanks trimmed, empty and '#'
    lines skipped, NAME=VALUE cut at the first '=', the value kept as is."""
    out = {}
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, raw in enumerate(lines):
        if len(raw) + 1 >= 64 * 1024:
            raise ValueError("line %d: token too long" % (i + 1))
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        raw.decode()  # docker: "contains invalid utf8 bytes"
        line = raw.decode().lstrip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if any(c in name for c in " \t") or not name:
            raise ValueError("bad name %r" % name)
        out[name] = value.encode()
    return out


def test_docker():
    path, left = write("docker", VARS)
    want_left = {n for n, v, _ in VARS if b"\n" in v or v.endswith(b"\r") or not utf8(v) or
                 len(n) + 1 + len(v) + 1 >= 64 * 1024}
    check(left == want_left, "docker leaves out line feeds, final carriage returns, non-UTF-8 "
          "and lines of 64 KiB: %d (%s...)" % (len(left), sorted(left)[:6]))
    with open(path, "rb") as f:
        compare("docker", "docker's env-file rules", docker_read(f.read()), expected(VARS, left))


def test_cli():
    if not ARGS.kbridge:
        return
    r = subprocess.run([ARGS.kbridge, "env", "-n", "shop", "--service", "api", "--env-format",
                        "yaml"], capture_output=True, text=True)
    check(r.returncode == 2 and r.stderr.count("\n") == 1 and
          'expected one of dotenv|json|sh|compose|docker, got "yaml"' in r.stderr,
          "kbridge env --env-format yaml: exit 2, one line naming the choices (%r)" % r.stderr)
    r = subprocess.run([ARGS.kbridge, "env", "-n", "shop", "--service", "Bad_Name"],
                       capture_output=True, text=True)
    check(r.returncode == 2 and "--service" in r.stderr, "kbridge env --service Bad_Name: exit 2")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--kbridge")
    ARGS = ap.parse_args()
    try:
        for t in (test_json, test_sh, test_dotenv, test_compose, test_docker, test_cli):
            t()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print("FAILED: %d" % len(FAILS) if FAILS else "PASS")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
