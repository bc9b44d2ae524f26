"""Container init of the test node. Started as
    ip netns exec <pod netns> python3 launcher.py SPEC.json
(`ip netns exec` already gave it the pod's network namespace and a private
mount namespace with /etc/netns/<pod netns>/ bound over /etc). It then
 - enters a new UTS namespace and sets the pod's hostname,
 - bind-mounts each volume at its mountPath (read-only when asked),
 - changes to workingDir, makes / read-only (readOnlyRootFilesystem), sets
   no_new_privs (allowPrivilegeEscalation: false), switches to runAsUser /
   runAsGroup / supplemental groups, and execs the container's program.
Mount points and working dirs that do not exist on the host are created and
listed in SPEC['created_file'] so `down` can remove them (the mounts
themselves are never visible outside the container)."""
import ctypes
import fcntl
import json
import os
import shutil
import socket
import sys

CLONE_NEWUTS = 0x04000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38
libc = ctypes.CDLL(None, use_errno=True)


def die(msg):
    sys.stderr.write("kbridge-test-node launcher: %s\n" % msg)
    sys.stderr.flush()
    os._exit(127)


def record(spec, path, key="created_file"):
    with open(spec[key], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(path + "\n")


def makedirs(spec, path):
    """mkdir -p, recording every directory it had to create."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        record(spec, d)


def mount(src, dst, flags):
    if libc.mount(src.encode() if src else None, dst.encode(), None, flags, None) != 0:
        e = ctypes.get_errno()
        die("mount %s on %s: %s" % (src, dst, os.strerror(e)))


def main():
    spec = json.load(open(sys.argv[1]))
    if libc.unshare(CLONE_NEWUTS) == 0:
        socket.sethostname(spec["hostname"])
    for m in spec["mounts"]:
        src = m["source"]
        dst = os.path.realpath(m["target"])
        if os.path.isdir(src):
            makedirs(spec, dst)
        else:
            makedirs(spec, os.path.dirname(dst))
            if not os.path.exists(dst):
                open(dst, "a").close()
                record(spec, dst)
        record(spec, dst, "used_file")     # so another cluster's `down` leaves it alone
        mount(src, dst, MS_BIND | MS_REC)
        if m.get("readOnly"):
            mount(None, dst, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    wd = spec.get("workingDir") or "/"
    try:
        makedirs(spec, wd)
        os.chdir(wd)
    except OSError as e:
        die("workingDir %s: %s" % (wd, e))
    if spec.get("readOnlyRootFilesystem"):
        # Only this mount namespace's view of / becomes read-only; the
        # volumes are mount points of their own and keep their mode.
        mount(None, "/", MS_BIND | MS_REMOUNT | MS_RDONLY)
    if spec.get("noNewPrivs"):
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    uid, gid = spec.get("uid"), spec.get("gid")
    argv = spec["argv"]
    if not argv:
        die("no command to run")
    prog_fd = None
    if uid:
        # Open an ELF program while still root and exec it by fd afterwards, so a
        # binary under a directory the container user cannot traverse (e.g. a
        # build tree in /root) still runs, as it would from an image.
        path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=spec["env"].get("PATH"))
        if path:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                if os.read(fd, 4) == b"\x7fELF":
                    prog_fd = fd
                else:
                    os.close(fd)
            except OSError:
                pass
    if uid is not None or gid is not None:
        os.setgroups(spec.get("groups") or [])
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    try:
        if prog_fd is not None:
            os.execve(prog_fd, argv, spec["env"])
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        die("exec %s: %s" % (argv[0], e))


if __name__ == "__main__":
    main()
