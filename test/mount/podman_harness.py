"""podman running containers from our lazy mounts (tests and benchmarks).

  PODMAN                     podman as this machine allows it (runc, cgroupfs)
  build_python_rootfs(dest)  a small root filesystem that runs this machine's python3
  enter_mount_namespace(pid) nsenter argv into nydusd's mount namespace (where
                             `ip netns exec` put its FUSE mount), with the host's
                             cgroup hierarchies mounted there once (runc needs them)
  python_version_in(node)    `podman run --rootfs <mount>:O python3 -V` on a node;
                             (output, seconds)
"""
import os
import pathlib
import re
import shutil
import subprocess
import time

import p2p_harness as ph

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def build_python_rootfs(dest):
    """A small root filesystem that runs this machine's python3: the
    interpreter, the libraries ldd names, and the standard library (without
    its tests and the big optional parts), laid out as Debian's merged /usr."""
    dest = pathlib.Path(dest)
    python = pathlib.Path(os.path.realpath("/usr/bin/python3"))
    (dest / "usr" / "bin").mkdir(parents=True)
    (dest / "usr" / "lib64").mkdir(parents=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        (dest / link).symlink_to(target)
    shutil.copy2(python, dest / "usr" / "bin" / python.name)
    (dest / "usr" / "bin" / "python3").symlink_to(python.name)
    ldd = subprocess.run(["ldd", str(python)], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+\.so[.\d]*)", ldd):
        real = pathlib.Path(os.path.realpath(lib))
        target = dest / "usr" / "lib" / "x86_64-linux-gnu" / pathlib.Path(lib).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target)
    loader = "ld-linux-x86-64.so.2"
    (dest / "usr" / "lib64" / loader).symlink_to(f"../lib/x86_64-linux-gnu/{loader}")
    stdlib = pathlib.Path(f"/usr/lib/{python.name}")
    skip = shutil.ignore_patterns("test", "tests", "site-packages", "dist-packages", "idlelib", "tkinter",
                                  "turtledemo", "ensurepip", "lib2to3", "pydoc_data")
    shutil.copytree(stdlib, dest / "usr" / "lib" / python.name, ignore=skip, symlinks=True)
    return dest


# Run inside a node's mount namespace: `ip netns exec` gave nydusd a fresh
# /sys there, without the host's cgroup mounts, and runc needs them. This
# mounts the same hierarchies again (v1 controllers or v2), once.
_CGROUP_MOUNTS = r"""
import subprocess
mine = open("/proc/self/mountinfo").read()
if " - cgroup" not in mine:
    for line in open("/proc/1/mountinfo"):
        left, _, right = line.partition(" - ")
        path = left.split()[4]
        fstype, _, superopts = right.split()[:3]
        if path == "/sys/fs/cgroup" and fstype == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "cgroup_root", path], check=True)
        elif fstype in ("cgroup", "cgroup2") and path.startswith("/sys/fs/cgroup"):
            opts = ",".join(o for o in superopts.split(",") if o not in ("rw", "ro"))
            subprocess.run(["mkdir", "-p", path], check=True)
            subprocess.run(["mount", "-t", fstype] + (["-o", opts] if opts else []) + [fstype, path], check=True)
"""


def enter_mount_namespace(pid):
    enter = ["nsenter", f"--mount=/proc/{pid}/ns/mnt"]
    subprocess.run(enter + [ph.PYTHON, "-c", _CGROUP_MOUNTS], check=True, timeout=30)
    return enter


def python_version_in(node):
    """`podman run --rootfs` of the node's mount with an overlay on top
    (:O, the runtime's writable root): python3 -V. Returns (output, seconds)."""
    enter = enter_mount_namespace(node.pid)
    start = time.monotonic()
    # podman joins nydusd's mount namespace (where `ip netns exec` put the
    # mount): overlayfs refuses a lower directory of another namespace.
    done = subprocess.run(enter + PODMAN +
                          ["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                           "--network", "none", "--rootfs", f"{node.mountpoint}:O", "/usr/bin/python3", "-V"],
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    assert done.returncode == 0, f"podman run: {done.stderr}\n{node.log()[-2000:]}"
    return done.stdout.strip(), seconds
