#!/usr/bin/env python3
"""The agent and signer images, built by the recipe users follow
(deploy/image/build), run by a real OCI runtime (runc) under the restrictions of
deploy/agent-deployment.example.yaml: uid 65532, read-only root, no
capabilities, no_new_privs, a seccomp filter. The kernel's view of the running
agent is read from /proc, not from the config we wrote:

  - the image config: user 65532:65532, entrypoint, exposed ports, labels, the
    architecture; the root has no shell and no package manager, a dpkg status
    entry per package (scanners see the libraries), every library the programs
    link is in the image;
  - the agent in the container: Uid/Gid 65532, CapEff/CapPrm/CapBnd/CapAmb 0,
    NoNewPrivs 1, Seccomp 2, "/" mounted read-only;
  - it does its job: an unrouted request reaches the original backend, alice's
    reaches her local process through `kbridge proxy` over the mTLS tunnel;
  - the signer image starts (its --help, through the runtime).

  python3 test_image.py --kbridge BIN --agent BIN   (the agent binary is unused:
  the image's own is run)

Needs root (mmdebstrap, runc) and Debian's package archive; exit 77 (skip) when
not root, saying so. Prints one "figure:" line with the sizes and build time.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import kbtest  # noqa: E402
from test_dataplane import served_by  # noqa: E402

KBRIDGE, AGENT = None, None
VERSION = None
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                      text=True).stdout.strip()
OUT = None        # the archives
BUILD_SECONDS = None
ROOTFS_MB = {}    # name -> size of the unpacked root filesystem
# Syscalls the filter refuses (EPERM): namespaces, mounts, module and key
# management, ptrace; everything else allowed, as a stand-in for RuntimeDefault.
DENIED = ["unshare", "setns", "mount", "umount2", "pivot_root", "ptrace", "init_module",
          "finit_module", "delete_module", "kexec_load", "add_key", "keyctl", "bpf"]


def sh(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(argv), r.returncode,
                                                      r.stdout[-2000:], r.stderr[-2000:]))
    return r.stdout


def build():
    global OUT, VERSION, BUILD_SECONDS
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        for line in f:
            if line.startswith("project(kbridge VERSION "):
                VERSION = line.split()[2]
    OUT = os.path.join(kbtest.tempfile.mkdtemp(prefix="kbimage-"), "out")
    t0 = time.time()
    r = subprocess.run([os.path.join(REPO, "deploy", "image", "build"), "--out", OUT],
                       stderr=subprocess.PIPE, text=True)
    BUILD_SECONDS = time.time() - t0
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise AssertionError("deploy/image/build failed (%d)" % r.returncode)


def archive(name, kind="oci"):
    return os.path.join(OUT, "kbridge-%s-%s-%s.%s.tar" % (name, VERSION, ARCH, kind))


class Bundle:
    """An image unpacked (umoci) into an OCI runtime bundle, run with runc."""

    def __init__(self, name, workdir):
        self.name = name
        scratch = kbtest.tempfile.mkdtemp(prefix=name + "-", dir=workdir)
        self.dir = os.path.join(scratch, "bundle")
        layout = os.path.join(scratch, "layout")
        sh(["skopeo", "copy", "-q", "oci-archive:" + archive(name), "oci:%s:%s" % (layout, VERSION)])
        sh(["umoci", "unpack", "--image", "%s:%s" % (layout, VERSION), self.dir])
        self.rootfs = os.path.join(self.dir, "rootfs")
        with open(os.path.join(self.dir, "config.json")) as f:
            self.spec = json.load(f)
        self.id = "kbimage-%s-%d-%s" % (name, os.getpid(), os.path.basename(scratch))
        self.state = os.path.join(workdir, "runc-state")

    def restrict(self, args, binds=()):
        """The pod's securityContext, as a runtime spec: read-only root, no
        capabilities, no_new_privs, seccomp, the host's network (loopback tests)."""
        s = self.spec
        p = s["process"]
        p["args"] = p["args"][:1] + list(args)
        p["terminal"] = False
        p["noNewPrivileges"] = True
        p["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable",
                                              "permitted", "ambient")}
        p.pop("rlimits", None)
        s["root"]["readonly"] = True
        lin = s.setdefault("linux", {})
        lin["namespaces"] = [n for n in lin.get("namespaces", []) if n["type"] != "network"]
        lin["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [],
                          "syscalls": [{"names": DENIED, "action": "SCMP_ACT_ERRNO"}]}
        lin.pop("uidMappings", None)
        lin.pop("gidMappings", None)
        s["mounts"] = [m for m in s["mounts"] if m["destination"] != "/tmp"]
        s["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                            "options": ["nosuid", "nodev", "noexec", "size=16m"]})
        for src, dst in binds:
            s["mounts"].append({"destination": dst, "type": "bind", "source": src,
                                "options": ["rbind", "ro", "nosuid", "nodev"]})
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(s, f)

    def argv(self):
        return ["runc", "--root", self.state, "run", "--bundle", self.dir, self.id]

    def pid(self):
        out = subprocess.run(["runc", "--root", self.state, "state", self.id],
                             capture_output=True, text=True).stdout
        return json.loads(out)["pid"] if out else None

    def delete(self):
        subprocess.run(["runc", "--root", self.state, "delete", "--force", self.id],
                       capture_output=True)


def proc_status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def root_mount_options(pid):
    with open("/proc/%d/mountinfo" % pid) as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/":
                return fields[5].split(",")
    raise AssertionError("no / in the agent's mountinfo")


class Image(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = kbtest.Env(KBRIDGE, AGENT)

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def test_config_and_contents(self):
        for name, entry in (("agent", "/usr/local/bin/kbridge-agent"),
                            ("signer", "/usr/local/bin/kbridge-signer")):
            with self.subTest(image=name):
                raw = sh(["skopeo", "inspect", "--config", "oci-archive:" + archive(name)])
                cfg = json.loads(raw)
                self.assertEqual(cfg["architecture"], ARCH)
                self.assertEqual(cfg["os"], "linux")
                c = cfg["config"]
                self.assertEqual(c["User"], "65532:65532")
                self.assertEqual(c["Entrypoint"], [entry])
                self.assertEqual(c["Labels"]["org.opencontainers.image.version"], VERSION)
                self.assertEqual(c["Labels"]["org.opencontainers.image.title"], "kbridge-" + name)
                if name == "agent":
                    self.assertEqual(sorted(c["ExposedPorts"]), ["7443/tcp", "9090/tcp"])
                # the docker-archive carries the same image under the same name
                with tarfile.open(archive(name, "docker")) as t:
                    manifest = json.load(t.extractfile("manifest.json"))
                self.assertEqual(manifest[0]["RepoTags"], ["ghcr.io/kbridge/%s:%s" % (name, VERSION)])

                b = Bundle(name, self.env.dir)
                r = b.rootfs
                ROOTFS_MB[name] = sh(["du", "-sm", r]).split()[0]
                for absent in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/dpkg", "usr/bin/apt"):
                    self.assertFalse(os.path.lexists(os.path.join(r, absent)), absent)
                status = os.listdir(os.path.join(r, "var/lib/dpkg/status.d"))
                for pkg in ("libc6", "libssl3", "libcurl4", "libevent-core-2.1-7"):
                    self.assertIn(pkg, status)
                with open(os.path.join(r, "var/lib/dpkg/status.d/libssl3")) as f:
                    text = f.read()
                self.assertIn("Status: install ok installed", text)
                self.assertRegex(text, r"(?m)^Version: 3\.")
                # every library the programs need is in the image: ldd inside it
                bins = ["kbridge-agent", "kbridge-agent-restore"] if name == "agent" \
                    else ["kbridge-signer"]
                for prog in bins:
                    out = sh(["chroot", r, "/lib64/ld-linux-x86-64.so.2" if ARCH == "amd64"
                              else "/lib/ld-linux-aarch64.so.1", "--list",
                              "/usr/local/bin/" + prog])
                    self.assertNotIn("not found", out, prog)
                    self.assertIn("libssl.so.3", out)

    def test_agent_runs_restricted_and_routes(self):
        e = self.env
        tls = e.certs()
        # the agent reads its certificates as uid 65532, as from a mounted Secret
        ro = os.path.join(e.dir, "tls-secret")
        shutil.copytree(tls, ro)
        for f in os.listdir(ro):
            os.chmod(os.path.join(ro, f), 0o440)
            os.chown(os.path.join(ro, f), 0, 65532)
        os.chmod(ro, 0o750)
        os.chown(ro, 0, 65532)
        origin = e.backend("origin")
        alice_local = e.backend("alice-local")

        b = Bundle("agent", e.dir)
        b.restrict(["--listen", "127.0.0.1:0", "--fallback", "127.0.0.1:%d" % origin.port,
                    "--tunnel-listen", "127.0.0.1:0", "--tls-dir", "/tls",
                    "--metrics", "127.0.0.1:0"], binds=[(ro, "/tls")])
        self.addCleanup(b.delete)
        agent = e.start("agent-image", b.argv())
        agent.port = int(agent.wait_line(r"^listen 127\.0\.0\.1:(\d+)", 30).group(1))
        agent.tunnel_port = int(agent.wait_line(r"^tunnel-listen 127\.0\.0\.1:(\d+)").group(1))
        agent.wait_line(r"^ready")

        pid = b.pid()
        self.assertTrue(pid)
        st = proc_status(pid)
        self.assertEqual(st["Uid"].split(), ["65532"] * 4)
        self.assertEqual(st["Gid"].split(), ["65532"] * 4)
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(st[cap], 16), 0, cap)
        self.assertEqual(st["NoNewPrivs"], "1")
        self.assertEqual(st["Seccomp"], "2")
        self.assertIn("ro", root_mount_options(pid))
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            self.assertEqual(f.read().split(b"\0")[0], b"/usr/local/bin/kbridge-agent")

        self.assertEqual(served_by(agent.port)["served_by"], "origin")
        e.proxy(agent, tls, "alice", alice_local.port)
        self.assertEqual(served_by(agent.port, headers={"kubernetes-route-as": "alice"})
                         ["served_by"], "alice-local")
        self.assertEqual(served_by(agent.port, headers={"kubernetes-route-as": "bob"})
                         ["served_by"], "origin")

    def test_signer_starts(self):
        b = Bundle("signer", self.env.dir)
        b.restrict(["--help"])
        self.addCleanup(b.delete)
        r = subprocess.run(b.argv(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("kbridge-signer", r.stdout + r.stderr)


def main():
    global KBRIDGE, AGENT
    KBRIDGE, AGENT = kbtest.binaries_from_args()
    if os.geteuid() != 0:
        print("SKIP: the image build (mmdebstrap) and runc need root")
        sys.exit(77)
    if not shutil.which("runc"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "runc"],
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), check=True)
    build()
    ok = unittest.main(exit=False, verbosity=2).result.wasSuccessful()
    sizes = ", ".join("%s %.1f MB OCI archive, %s MB root" % (
        n, os.path.getsize(archive(n)) / 1e6, ROOTFS_MB.get(n, "?")) for n in ("agent", "signer"))
    print("figure: image build %.0f s (cached inputs: under a second); %s" % (BUILD_SECONDS, sizes))
    shutil.rmtree(os.path.dirname(OUT), ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
