"""Pods on the test node: one PodWorker thread per pod bound to the node.

A worker builds the pod sandbox (network namespace on the node bridge,
rendered volumes), starts each container as a local process through
launcher.py, runs its probes, restarts containers per restartPolicy with
back-off, reports a truthful status (phase, podIP, conditions,
containerStatuses) and, when the pod is being deleted, stops the containers
(SIGTERM, grace period, SIGKILL), removes the sandbox and deletes the pod
object with grace 0, as a kubelet finalizes deletion.

Images map to local programs through images.json (see there).
"""
import base64
import datetime
import fnmatch
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import nsutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
BACKOFF_BASE = float(os.environ.get("KBRIDGE_NODE_BACKOFF", "2"))
BACKOFF_MAX = 60.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg):
    sys.stderr.write("%s %s\n" % (now(), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------- images ---
def normalize_image(image):
    img = image
    first = img.split("/", 1)[0]
    if "/" in img and ("." in first or ":" in first or first == "localhost"):
        img = img.split("/", 1)[1]          # registry host
    if img.startswith("library/"):
        img = img[len("library/"):]
    last = img.rsplit("/", 1)[-1]
    if "@" in last:
        img = img.split("@", 1)[0]
        last = img.rsplit("/", 1)[-1]
    if ":" not in last:
        img += ":latest"
    return img


def load_image_table(state_dir):
    with open(os.path.join(HERE, "images.json")) as f:
        table = json.load(f)
    images, defaults = dict(table["images"]), dict(table.get("defaults", {}))
    for extra in (os.environ.get("KBRIDGE_IMAGE_MAP"), os.path.join(state_dir, "images.json")):
        if extra and os.path.exists(extra):
            with open(extra) as f:
                t = json.load(f)
            images.update(t.get("images", {}))
            defaults.update(t.get("defaults", {}))
    return images, defaults


def resolve_image(image, state_dir):
    """(entrypoint, cmd) for image, or raise LookupError(message) like a
    failed pull."""
    images, defaults = load_image_table(state_dir)
    norm = normalize_image(image)
    for pat in sorted(images, key=len, reverse=True):
        if fnmatch.fnmatchcase(norm, pat) or fnmatch.fnmatchcase(norm, "*/" + pat):
            ent = images[pat]
            env = {"REPO": REPO}

            def sub(s):
                return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), os.environ.get(m.group(1), "")), s)
            for k, v in defaults.items():
                env[k] = os.environ.get(k) or sub(v)
            entry = [sub(x) for x in ent.get("entrypoint", [])]
            cmd = [sub(x) for x in ent.get("cmd", [])]
            prog = (entry or cmd or [""])[0]
            if prog.startswith("/") and not os.access(prog, os.X_OK):
                raise LookupError("image %s maps to %s, which does not exist or is not executable"
                                  % (image, prog))
            if prog and "/" not in prog and not shutil.which(prog):
                raise LookupError("image %s maps to %s, not found in PATH" % (image, prog))
            return entry, cmd, ent.get("user", 0)
    raise LookupError('pull access denied for %s: no local program for this image in the '
                      'test node image table' % image)


# ------------------------------------------------------------ quantities ---
SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
          "T": 1e12, "m": 1e-3, "": 1}


def quantity(q):
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q).strip())
    if not m or m.group(2) not in SUFFIX:
        raise ValueError("bad quantity %r" % q)
    return float(m.group(1)) * SUFFIX[m.group(2)]


def expand(s, env):
    """Kubernetes $(VAR) expansion; $$ escapes."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i) and ")" in s[i:]:
            j = s.index(")", i)
            name = s[i + 2:j]
            out.append(env[name] if name in env else s[i:j + 1])
            i = j + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class ConfigError(Exception):
    """A referenced ConfigMap/Secret/key is missing: CreateContainerConfigError."""


# ------------------------------------------------------------ containers ---
def nsenter_argv(pid, c):
    """nsenter into a container's network, mount and UTS namespaces as its user
    (exec probes and `kubectl exec` run like the container's own processes)."""
    argv = ["nsenter", "-t", str(pid), "-n", "-m", "-u"]
    sec = getattr(c, "sec", None) or {}
    if sec.get("gid") is not None:
        argv += ["-G", str(sec["gid"])]
    if sec.get("uid") is not None:
        argv += ["-S", str(sec["uid"])]
    return argv + ["--"]


class Container:
    def __init__(self, spec, init=False):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.proc = None
        self.restart_count = 0
        self.state = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state = {}
        self.ready = False
        self.started = False
        self.done = False            # init container finished, or will not run again
        self.next_start = 0.0
        self.backoff = 0.0
        self.pull_failures = 0
        self.probe_stop = None
        self.live_fail = False
        self.started_at = None
        self.env = {}

    def status(self, image):
        st = {"name": self.name, "image": image, "imageID": "kbridge-test-node://" + normalize_image(image),
              "ready": self.ready, "restartCount": self.restart_count, "state": self.state,
              "lastState": self.last_state}
        if self.proc is not None:
            st["containerID"] = "kbridge-test-node://%d" % self.proc.pid
            st["started"] = self.started
        return st


class ProbeThread(threading.Thread):
    """Runs one probe (readiness or liveness) of one container run."""

    def __init__(self, worker, ctr, kind, probe, stop):
        super().__init__(daemon=True)
        self.w, self.c, self.kind, self.p, self.stop = worker, ctr, kind, probe, stop

    def run(self):
        p = self.p
        period = p.get("periodSeconds", 10)
        timeout = p.get("timeoutSeconds", 1)
        succ_th, fail_th = p.get("successThreshold", 1), p.get("failureThreshold", 3)
        succ = fail = 0
        if self.stop.wait(p.get("initialDelaySeconds", 0)):
            return
        while not self.stop.is_set():
            ok, why = self.w.run_probe(self.c, p, timeout)
            if self.stop.is_set():      # the container run ended meanwhile
                return
            if ok:
                succ, fail = succ + 1, 0
            else:
                succ, fail = 0, fail + 1
            if self.kind == "readiness":
                if ok and succ >= succ_th and not self.c.ready:
                    self.c.ready = True
                    self.w.wake()
                elif not ok and fail >= fail_th and self.c.ready:
                    self.c.ready = False
                    self.w.event("Warning", "Unhealthy", "Readiness probe failed: %s" % why)
                    self.w.wake()
            elif not ok and fail >= fail_th:
                self.w.event("Warning", "Unhealthy", "Liveness probe failed: %s" % why)
                self.c.live_fail = True
                self.w.kill_container(self.c, self.w.grace())
                return
            if self.stop.wait(period):
                return


class PodWorker(threading.Thread):
    def __init__(self, node, pod):
        super().__init__(daemon=True, name="pod-" + pod["metadata"]["name"])
        self.node = node
        self.kube = node.kube
        self.pod = pod
        md = pod["metadata"]
        self.ns, self.name, self.uid = md["namespace"], md["name"], md["uid"]
        self.podns = node.pod_netns_prefix + self.uid.replace("-", "")[:12]
        self.veth = "vp" + self.uid.replace("-", "")[:12]
        self.dir = os.path.join(node.state_dir, "pods", self.uid)
        self.ip = None
        self.cond = threading.Condition()
        self.dirty = True
        self.gone = False              # pod object vanished from the API
        self.lock = threading.RLock()
        self.inits = [Container(c, init=True) for c in pod["spec"].get("initContainers", [])]
        self.ctrs = [Container(c) for c in pod["spec"]["containers"]]
        self.cond_times = {}
        self.last_status = None
        self.start_time = now()
        self.sandbox_error = None
        self.token_times = {}
        self.next_refresh = 0
        self.volumes_ready = False
        self.mount_error = None

    # ---- plumbing
    def wake(self):
        with self.cond:
            self.dirty = True
            self.cond.notify()

    def update(self, pod):
        self.pod = pod
        self.wake()

    def vanish(self):
        self.gone = True
        self.wake()

    def grace(self):
        g = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return max(0, g)

    def event(self, etype, reason, msg):
        self.node.event(self.pod, etype, reason, msg)

    def api(self, kind, name, allow_missing=False):
        path = "/api/v1/namespaces/%s/%s/%s" % (self.ns, kind, name)
        return self.kube.get(path, allow=(404,) if allow_missing else ())

    # ---- main loop
    def run(self):
        try:
            self.setup_sandbox()
        except Exception as e:  # noqa: BLE001
            self.sandbox_error = str(e)
            log("pod %s/%s: sandbox failed: %s" % (self.ns, self.name, e))
            self.event("Warning", "FailedCreatePodSandBox", str(e))
        while True:
            with self.cond:
                if not self.dirty:
                    self.cond.wait(0.5)
                self.dirty = False
            try:
                if self.gone or self.pod["metadata"].get("deletionTimestamp"):
                    self.terminate()
                    return
                if self.sandbox_error is None and not self.volumes_ready and time.time() >= self.next_refresh:
                    try:
                        self.render_volumes()
                        self.volumes_ready = True
                        self.next_refresh = time.time() + 20
                    except ConfigError as e:
                        # Like kubelet: FailedMount, retried until the ConfigMap/Secret exists.
                        if str(e) != self.mount_error:
                            self.event("Warning", "FailedMount", "MountVolume.SetUp failed: %s" % e)
                            self.mount_error = str(e)
                        self.next_refresh = time.time() + 2
                if self.sandbox_error is None and self.volumes_ready:
                    self.step()
                    if time.time() >= self.next_refresh:
                        self.render_volumes(refresh=True)
                        self.next_refresh = time.time() + 20
                self.report()
            except Exception as e:  # noqa: BLE001 - keep the pod going, say why
                log("pod %s/%s: %s: %s" % (self.ns, self.name, type(e).__name__, e))
                time.sleep(1)

    # ---- sandbox
    def setup_sandbox(self):
        os.makedirs(os.path.join(self.dir, "volumes"), exist_ok=True)
        self.ip = self.node.alloc_ip(self.uid)
        n = self.node
        nsutil.create_pod_netns(n.node_netns, self.podns, self.veth, self.ip, n.net["bridge_ip"],
                                self.hostname(), n.net["dns_ip"],
                                ["%s.svc.cluster.local" % self.ns, "svc.cluster.local", "cluster.local"])
        log("pod %s/%s: sandbox %s ip %s" % (self.ns, self.name, self.podns, self.ip))

    def hostname(self):
        return self.pod["spec"].get("hostname") or self.name

    def teardown(self):
        nsutil.delete_pod_netns(self.node.node_netns, self.podns, self.veth)
        self.node.free_ip(self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- volumes
    def write_file(self, base, rel, data, mode):
        path = os.path.normpath(os.path.join(base, rel))
        if not path.startswith(base + os.sep):
            raise ConfigError("volume path %r escapes the volume" % rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        try:
            if open(path, "rb").read() == data:
                os.chmod(path, mode)
                self.apply_fs_group(path)
                return
        except OSError:
            pass
        tmp = path + ".kbtmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        self.apply_fs_group(tmp)
        os.replace(tmp, path)

    def apply_fs_group(self, path):
        """fsGroup: volume files belong to that group, readable by it (as kubelet does)."""
        g = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        if g is not None:
            os.chown(path, -1, g)
            st = os.stat(path).st_mode & 0o7777
            os.chmod(path, st | ((st & 0o600) >> 3))

    def kv_source(self, kind, name, optional):
        """data dict (bytes values) of a ConfigMap or Secret, or None when optional+missing."""
        obj = self.api("configmaps" if kind == "configMap" else "secrets", name, allow_missing=True)
        if obj is None:
            if optional:
                return None
            raise ConfigError('%s "%s" not found' % (kind, name))
        if kind == "configMap":
            d = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            d.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            d = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return d

    def project_kv(self, base, kind, src, default_mode, optional):
        name = src.get("name") or src.get("secretName")
        data = self.kv_source(kind, name, optional or src.get("optional", False))
        if data is None:
            return
        items = src.get("items")
        if items:
            for it in items:
                if it["key"] not in data:
                    if src.get("optional"):
                        continue
                    raise ConfigError('key "%s" not in %s %s' % (it["key"], kind, name))
                self.write_file(base, it["path"], data[it["key"]], it.get("mode", default_mode))
        else:
            for k, v in data.items():
                self.write_file(base, k, v, default_mode)

    def project_downward(self, base, items, default_mode, ctr=None):
        for it in items:
            if "fieldRef" in it:
                val = self.field_ref(it["fieldRef"]["fieldPath"], volume=True)
            else:
                val = self.resource_ref(it["resourceFieldRef"], ctr)
            self.write_file(base, it["path"], val, it.get("mode", default_mode))

    def sa_token(self, src):
        aud = src.get("audience")
        exp = src.get("expirationSeconds", 3600)
        key = (aud, exp, src["path"])
        t = self.token_times.get(key)
        if t and time.time() < t + exp * 0.8:
            return None
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [aud] if aud else [], "expirationSeconds": exp,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name,
                                            "uid": self.uid}}}
        r = self.kube.create("/api/v1/namespaces/%s/serviceaccounts/%s/token" % (self.ns, sa), body)
        self.token_times[key] = time.time()
        return r["status"]["token"]

    def render_volumes(self, refresh=False):
        """Write every volume under <pod dir>/volumes/<name>; with refresh,
        only update contents (ConfigMap/Secret changes, token renewal)."""
        for v in self.pod["spec"].get("volumes", []):
            base = os.path.join(self.dir, "volumes", v["name"])
            os.makedirs(base, exist_ok=True)
            try:
                if "secret" in v:
                    s = v["secret"]
                    self.project_kv(base, "secret", s, s.get("defaultMode", 0o644), s.get("optional", False))
                elif "configMap" in v:
                    s = v["configMap"]
                    self.project_kv(base, "configMap", s, s.get("defaultMode", 0o644), s.get("optional", False))
                elif "downwardAPI" in v:
                    s = v["downwardAPI"]
                    self.project_downward(base, s.get("items", []), s.get("defaultMode", 0o644))
                elif "projected" in v:
                    s = v["projected"]
                    mode = s.get("defaultMode", 0o644)
                    for src in s.get("sources", []):
                        if "secret" in src:
                            self.project_kv(base, "secret", src["secret"], mode, False)
                        elif "configMap" in src:
                            self.project_kv(base, "configMap", src["configMap"], mode, False)
                        elif "downwardAPI" in src:
                            self.project_downward(base, src["downwardAPI"].get("items", []), mode)
                        elif "serviceAccountToken" in src:
                            tok = self.sa_token(src["serviceAccountToken"])
                            if tok:
                                self.write_file(base, src["serviceAccountToken"]["path"], tok, mode)
                elif "emptyDir" in v:
                    os.chmod(base, 0o777)       # as Kubernetes makes emptyDir
                    self.apply_fs_group(base)
                elif "hostPath" in v:
                    pass
                elif not refresh:
                    self.event("Warning", "FailedMount", "volume %s: type not supported by the test node"
                               % v["name"])
            except ConfigError as e:
                if not refresh:
                    raise
                log("pod %s/%s: volume refresh %s: %s" % (self.ns, self.name, v["name"], e))

    def volume_source(self, name):
        for v in self.pod["spec"].get("volumes", []):
            if v["name"] == name:
                if "hostPath" in v:
                    return v["hostPath"]["path"]
                return os.path.join(self.dir, "volumes", name)
        raise ConfigError("volume %s not defined" % name)

    # ---- env
    def field_ref(self, path, volume=False):
        md, spec, status = self.pod["metadata"], self.pod["spec"], self.pod.get("status", {})
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return (md.get(m.group(1)) or {}).get(m.group(2), "")
        if path in ("metadata.labels", "metadata.annotations"):
            d = md.get(path.split(".")[1]) or {}
            return "\n".join('%s="%s"' % (k, d[k].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                             for k in sorted(d))
        simple = {"metadata.name": md["name"], "metadata.namespace": md["namespace"],
                  "metadata.uid": md["uid"], "spec.nodeName": spec.get("nodeName", ""),
                  "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                  "status.hostIP": self.node.net["node_ip"], "status.podIP": self.ip or "",
                  "status.podIPs": self.ip or ""}
        if path in simple:
            return simple[path]
        raise ConfigError("unsupported fieldPath %s" % path)

    def resource_ref(self, ref, ctr_spec):
        res = ref["resource"]
        if ref.get("containerName"):
            ctr_spec = next((c for c in self.pod["spec"]["containers"] if c["name"] == ref["containerName"]),
                            ctr_spec)
        kind, rname = res.split(".", 1)
        resources = (ctr_spec or {}).get("resources", {})
        val = (resources.get(kind) or {}).get(rname)
        if val is None and kind == "requests":
            val = (resources.get("limits") or {}).get(rname)
        if val is None:
            val = self.node.allocatable.get(rname, "0")
        divisor = quantity(ref.get("divisor", "1"))
        return str(int(math.ceil(quantity(val) / divisor)))

    def service_env(self):
        env = {}
        svcs = self.kube.get("/api/v1/namespaces/%s/services" % self.ns)["items"]
        if self.pod["spec"].get("enableServiceLinks", True) is False:
            svcs = []
        k = self.kube.get("/api/v1/namespaces/default/services/kubernetes", allow=(404,))
        if k and self.ns != "default":
            svcs.append(k)
        elif k and not any(s["metadata"]["name"] == "kubernetes" for s in svcs):
            svcs.append(k)
        for s in svcs:
            ip = s["spec"].get("clusterIP")
            if not ip or ip == "None" or not s["spec"].get("ports"):
                continue
            n = s["metadata"]["name"].upper().replace("-", "_")
            ports = s["spec"]["ports"]
            env[n + "_SERVICE_HOST"] = ip
            env[n + "_SERVICE_PORT"] = str(ports[0]["port"])
            for p in ports:
                if p.get("name"):
                    env["%s_SERVICE_PORT_%s" % (n, p["name"].upper().replace("-", "_"))] = str(p["port"])
            proto0 = ports[0].get("protocol", "TCP").lower()
            env[n + "_PORT"] = "%s://%s:%d" % (proto0, ip, ports[0]["port"])
            for p in ports:
                proto = p.get("protocol", "TCP")
                pre = "%s_PORT_%d_%s" % (n, p["port"], proto)
                env[pre] = "%s://%s:%d" % (proto.lower(), ip, p["port"])
                env[pre + "_PROTO"] = proto.lower()
                env[pre + "_PORT"] = str(p["port"])
                env[pre + "_ADDR"] = ip
        return env

    def container_env(self, spec):
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": self.hostname(), "HOME": "/root"}
        env.update(self.service_env())
        for ef in spec.get("envFrom", []):
            prefix = ef.get("prefix", "")
            if "configMapRef" in ef:
                r = ef["configMapRef"]
                d = self.kv_source("configMap", r["name"], r.get("optional", False))
            else:
                r = ef["secretRef"]
                d = self.kv_source("secret", r["name"], r.get("optional", False))
            for key, val in (d or {}).items():
                env[prefix + key] = val.decode(errors="replace")
        for e in spec.get("env", []):
            if "valueFrom" not in e:
                env[e["name"]] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "configMapKeyRef" in vf or "secretKeyRef" in vf:
                kind = "configMap" if "configMapKeyRef" in vf else "secret"
                r = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                d = self.kv_source(kind, r["name"], r.get("optional", False))
                if d is None or r["key"] not in d:
                    if r.get("optional"):
                        continue
                    raise ConfigError('couldn\'t find key %s in %s %s/%s' % (r["key"], kind, self.ns, r["name"]))
                env[e["name"]] = d[r["key"]].decode(errors="replace")
            elif "fieldRef" in vf:
                env[e["name"]] = self.field_ref(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[e["name"]] = self.resource_ref(vf["resourceFieldRef"], spec)
        return env

    def security(self, spec, image_user):
        """uid/gid/groups/readOnlyRootFilesystem/noNewPrivs for launcher.py from
        the pod and container securityContext, as a kubelet would apply them."""
        psc = self.pod["spec"].get("securityContext") or {}
        csc = spec.get("securityContext") or {}

        def pick(k):
            return csc[k] if k in csc else psc.get(k)
        uid = pick("runAsUser")
        if uid is None:
            uid = image_user
        if pick("runAsNonRoot") and uid == 0:
            raise ConfigError("container has runAsNonRoot and image will run as root (pod: \"%s_%s(%s)\", "
                              "container: %s)" % (self.name, self.ns, self.uid, spec["name"]))
        gid = pick("runAsGroup")
        groups = list(psc.get("supplementalGroups") or [])
        if psc.get("fsGroup") is not None:
            groups.append(psc["fsGroup"])
        out = {"uid": uid, "gid": gid if gid is not None else (uid if uid else None), "groups": groups,
               "readOnlyRootFilesystem": bool(csc.get("readOnlyRootFilesystem")),
               "noNewPrivs": csc.get("allowPrivilegeEscalation") is False}
        if not uid and gid is None and not groups:
            out["uid"] = out["gid"] = None      # stay root, keep root's groups
        return out

    # ---- containers
    def start_container(self, c):
        spec = c.spec
        try:
            entry, cmd, image_user = resolve_image(spec["image"], self.node.state_dir)
        except LookupError as e:
            c.pull_failures += 1
            reason = "ErrImagePull" if c.pull_failures % 2 == 1 else "ImagePullBackOff"
            if c.pull_failures == 1:
                self.event("Warning", "Failed", "Failed to pull image \"%s\": %s" % (spec["image"], e))
            c.state = {"waiting": {"reason": reason,
                                   "message": ("Back-off pulling image \"%s\"" % spec["image"])
                                   if reason == "ImagePullBackOff" else str(e)}}
            c.next_start = time.time() + min(2.5 * c.pull_failures, 10)
            return
        c.pull_failures = 0
        try:
            env = self.container_env(spec)
            mounts = []
            for m in spec.get("volumeMounts", []):
                src = self.volume_source(m["name"])
                if m.get("subPath"):
                    src = os.path.join(src, m["subPath"])
                    if not os.path.exists(src):
                        os.makedirs(src, exist_ok=True)
                mounts.append({"source": src, "target": m["mountPath"], "readOnly": m.get("readOnly", False)})
            sec = self.security(spec, image_user)
        except ConfigError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = time.time() + 2
            return
        if sec.get("uid"):
            env["HOME"] = "/"
        c.sec = sec
        if "command" in spec:
            argv = list(spec["command"]) + list(spec.get("args", []))
        else:
            argv = entry + list(spec["args"] if "args" in spec else cmd)
        argv = [expand(a, env) for a in argv]
        specfile = os.path.join(self.dir, "%s.spec.json" % c.name)
        with open(specfile, "w") as f:
            json.dump({"hostname": self.hostname(), "mounts": mounts, "workingDir": spec.get("workingDir"),
                       "argv": argv, "env": env, **sec,
                       "created_file": os.path.join(self.node.state_dir, "created-dirs"),
                       "used_file": os.path.join(self.node.state_dir, "used-dirs")}, f)
        logf = open(os.path.join(self.node.state_dir, "logs", "%s_%s_%s.log" % (self.ns, self.name, c.name)), "ab")
        c.log_path = logf.name
        c.env = env
        c.proc = subprocess.Popen(["ip", "netns", "exec", self.podns, sys.executable,
                                   os.path.join(HERE, "launcher.py"), specfile],
                                  stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env={"PATH": DEFAULT_PATH})
        logf.close()
        c.started_at = now()
        c.started_ts = time.time()
        c.state = {"running": {"startedAt": c.started_at}}
        c.started = True
        c.live_fail = False
        c.ready = not c.init and "readinessProbe" not in spec
        self.event("Normal", "Started", "Started container %s" % c.name)
        c.probe_stop = threading.Event()
        for kind in ("readiness", "liveness"):
            p = spec.get(kind + "Probe")
            if p and not c.init:
                ProbeThread(self, c, kind, p, c.probe_stop).start()

    def kill_container(self, c, grace):
        """SIGTERM, wait up to grace seconds, SIGKILL (the container's pid 1
        is the process that launcher exec'd)."""
        with self.lock:
            p = c.proc
        if p is None or p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.kill()
        except ProcessLookupError:
            pass
        self.wake()

    def backoff(self, c):
        c.backoff = BACKOFF_BASE if c.backoff == 0 else min(c.backoff * 2, BACKOFF_MAX)
        c.next_start = time.time() + c.backoff

    def check_exit(self, c):
        if c.proc is None or c.proc.poll() is None:
            return False
        code = c.proc.returncode
        if code < 0:
            code = 128 - code
        if c.probe_stop:
            c.probe_stop.set()
        c.ready = False
        term = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                               "startedAt": c.started_at, "finishedAt": now(),
                               "containerID": "kbridge-test-node://%d" % c.proc.pid}}
        c.proc = None
        c.state = term
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if c.init:
            if code == 0:
                c.done = True
                return True
            if policy == "Never":
                c.done = True
                return True
        elif policy == "Never" or (policy == "OnFailure" and code == 0):
            c.done = True
            return True
        # will restart
        c.last_state = term
        c.restart_count += 1
        if c.live_fail:
            self.event("Normal", "Killing", "Container %s failed liveness probe, will be restarted" % c.name)
        if time.time() - c.started_ts > 600:     # ran well for a while: back-off starts over
            c.backoff = 0
        self.backoff(c)
        c.state = {"waiting": {"reason": "CrashLoopBackOff",
                               "message": "back-off %ds restarting failed container=%s pod=%s_%s" % (
                                   c.backoff, c.name, self.name, self.ns)}}
        return True

    def step(self):
        with self.lock:
            for c in self.inits + self.ctrs:
                self.check_exit(c)
            for c in self.inits:
                if c.done:
                    if "terminated" in c.state and c.state["terminated"]["exitCode"] != 0:
                        return      # failed, restartPolicy Never: pod Failed
                    continue
                if c.proc is None and time.time() >= c.next_start:
                    self.start_container(c)
                return              # one init container at a time
            for c in self.ctrs:
                if c.proc is None and not c.done and time.time() >= c.next_start:
                    self.start_container(c)

    # ---- status
    def phase(self):
        if self.sandbox_error:
            return "Pending"
        if any(not c.done for c in self.inits):
            return "Pending"
        if any(c.done and c.state.get("terminated", {}).get("exitCode") for c in self.inits):
            return "Failed"
        if all(c.done for c in self.ctrs):
            if all(c.state.get("terminated", {}).get("exitCode", 1) == 0 for c in self.ctrs):
                return "Succeeded"
            return "Failed"
        if any(c.proc is not None or c.restart_count > 0 for c in self.ctrs):
            return "Running"
        return "Pending"

    def condition(self, ctype, ok, reason=None):
        st = "True" if ok else "False"
        prev = self.cond_times.get(ctype)
        if not prev or prev[0] != st:
            self.cond_times[ctype] = (st, now())
        c = {"type": ctype, "status": st, "lastProbeTime": None,
             "lastTransitionTime": self.cond_times[ctype][1]}
        if reason and not ok:
            c["reason"] = reason
        return c

    def report(self):
        with self.lock:
            phase = self.phase()
            inited = all(c.done for c in self.inits)
            ready = inited and all(c.ready for c in self.ctrs) and phase == "Running"
            status = {
                "phase": phase, "hostIP": self.node.net["node_ip"], "startTime": self.start_time,
                "conditions": [self.condition("Initialized", inited, "ContainersNotInitialized"),
                               self.condition("Ready", ready, "ContainersNotReady"),
                               self.condition("ContainersReady", ready, "ContainersNotReady"),
                               self.condition("PodScheduled", True)],
                "containerStatuses": [c.status(c.spec["image"]) for c in self.ctrs],
            }
            if self.inits:
                status["initContainerStatuses"] = [c.status(c.spec["image"]) for c in self.inits]
            if self.ip:
                status["podIP"] = self.ip
                status["podIPs"] = [{"ip": self.ip}]
            if self.sandbox_error:
                status["message"] = self.sandbox_error
        if status == self.last_status:
            return
        st, body = self.kube.request("PATCH", "/api/v1/namespaces/%s/pods/%s/status" % (self.ns, self.name),
                                     {"status": status}, "application/merge-patch+json")
        if 200 <= st < 300:
            self.last_status = status
        elif st == 404:
            self.gone = True
        else:
            log("pod %s/%s: status patch: %s %s" % (self.ns, self.name, st, body))

    # ---- probes
    def probe_port(self, port, spec):
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in spec.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        raise ValueError("unknown named port %s" % port)

    def run_probe(self, c, p, timeout):
        try:
            if "exec" in p:
                proc = c.proc
                if proc is None:
                    return False, "container not running"
                r = subprocess.run(nsenter_argv(proc.pid, c) + p["exec"]["command"],
                                   capture_output=True, timeout=max(timeout, 1), env=c.env)
                return r.returncode == 0, "exit code %d: %s" % (r.returncode, r.stdout[-200:] + r.stderr[-200:])
            if "tcpSocket" in p:
                port = self.probe_port(p["tcpSocket"]["port"], c.spec)
                host = p["tcpSocket"].get("host") or self.ip
                s = nsutil.in_netns(self.podns, socket.create_connection, (host, port), timeout)
                s.close()
                return True, ""
            if "httpGet" in p:
                h = p["httpGet"]
                port = self.probe_port(h["port"], c.spec)
                host = h.get("host") or self.ip
                s = nsutil.in_netns(self.podns, socket.create_connection, (host, port), timeout)
                try:
                    s.settimeout(timeout)
                    if h.get("scheme", "HTTP").upper() == "HTTPS":
                        ctx = ssl.create_default_context()
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                        s = ctx.wrap_socket(s)
                    hdrs = "".join("%s: %s\r\n" % (x["name"], x["value"]) for x in h.get("httpHeaders", []))
                    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: kube-probe/1.20\r\n%s"
                               "Connection: close\r\n\r\n" % (h.get("path", "/"), host, port, hdrs)).encode())
                    line = s.makefile("rb").readline().decode(errors="replace")
                finally:
                    s.close()
                parts = line.split()
                code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                return 200 <= code < 400, "HTTP probe failed with statuscode: %d" % code
            return True, ""
        except Exception as e:  # noqa: BLE001 - probe failure
            return False, str(e)

    # ---- deletion
    def terminate(self):
        grace = 0 if self.gone else self.grace()
        log("pod %s/%s: stopping (grace %ss)" % (self.ns, self.name, grace))
        with self.lock:
            ctrs = [c for c in self.inits + self.ctrs]
        for c in ctrs:
            if c.probe_stop:
                c.probe_stop.set()
        threads = [threading.Thread(target=self.kill_container, args=(c, grace)) for c in ctrs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for pid in nsutil.netns_pids(self.podns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for c in ctrs:
            if c.proc is not None:
                try:
                    c.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.teardown()
        if not self.gone:
            self.kube.delete("/api/v1/namespaces/%s/pods/%s" % (self.ns, self.name),
                             {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                              "preconditions": {"uid": self.uid}}, allow=(404, 409))
        self.node.forget(self.uid)
        log("pod %s/%s: removed" % (self.ns, self.name))
