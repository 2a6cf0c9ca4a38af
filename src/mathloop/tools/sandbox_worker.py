"""The process side of `mathloop.tools.sandbox`: a zygote that forks one confined process per session.

Run as a script (``python -I -B sandbox_worker.py CONFIG_JSON``) by `Sandbox`; it imports nothing from mathloop so
it starts with a clean interpreter. The zygote runs no model code: it picks its mode (`choose_mode`: root, userns,
landlock, refused), sets up the shared isolation (in the namespace modes: network and mount namespaces, read-only
file systems, hidden home folders; in userns mode inside a user namespace of its own), preloads math/numpy/sympy,
then forks on request. In the namespace modes each forked child is the init (pid 1) of a new PID namespace (a raw
clone(), see `fork_into_new_pidns`): it gives the session its own mount and IPC namespaces (a private tmpfs as /tmp,
a /proc of the new PID namespace), forks the session process (pid 2) and waits for it; killing the init kills the
session. The session process confines itself (its own unprivileged uid as root, else no capabilities; rlimits,
no_new_privs, Landlock rules in landlock mode, seccomp) before it reads the first cell, and then executes cells in
one namespace until its socket closes.

Wire format on every socket: 4-byte big-endian length, then UTF-8 JSON. A request is {"id", "code"}; its reply
echoes the id, so a reply the code forged or one left over from an earlier cell is a protocol error.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import traceback

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 4, 38, 22
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
SECCOMP_MODE_FILTER = 2
# The modes, strongest first; see `choose_mode`. "unsafe" is "refused" allowed by the caller's explicit opt-in.
MODES = ("root", "userns", "landlock", "refused")
NAMESPACE_MODES = ("root", "userns")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_pylibc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL across the call: needed around a raw clone()
_pylibc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


# ---------------------------------------------------------------------------------------------------- framing

def send_msg(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class ProtocolError(ValueError):
    """A message that is not a length-prefixed JSON object within the size limit."""


def recv_msg(sock: socket.socket, max_bytes: int = 1 << 26) -> dict | None:
    """The next message, or None when the peer closed the socket. Raises ProtocolError for anything undecodable."""
    head = recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > max_bytes:
        raise ProtocolError(f"a message of {n} bytes (the limit is {max_bytes})")
    body = recv_exact(sock, n)
    if body is None:
        return None
    try:
        msg = json.loads(body)
    except Exception as e:  # noqa: BLE001 - bad UTF-8, bad JSON, nesting past the recursion limit
        raise ProtocolError(f"a message that is not JSON ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"a JSON {type(msg).__name__} instead of an object")
    return msg


# ---------------------------------------------------------------------------------------------------- seccomp

# x86_64 syscall numbers; the filter is only installed on x86_64 (other arches: layer reported missing).
_SYSCALLS_DENIED = {
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "ptrace": 101, "socket": 41, "socketpair": 53,
    "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288, "mount": 165, "umount2": 166,
    "unshare": 272, "setns": 308, "pidfd_open": 434, "pidfd_send_signal": 424, "process_vm_readv": 310,
    "process_vm_writev": 311, "kexec_load": 246, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "io_uring_setup": 425, "keyctl": 250, "add_key": 248, "request_key": 249,
    # SysV IPC and POSIX message queues (the IPC namespace isolates them too), memory-backed files outside the tmpfs
    "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66,
    "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
    "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "memfd_create": 319,
    "memfd_secret": 447,
}
_NR_CLONE, _NR_CLONE3, _NR_KILL, _NR_TKILL, _NR_TGKILL = 56, 435, 62, 200, 234
_AUDIT_ARCH_X86_64 = 0xC000003E
_CLONE_THREAD = 0x00010000


def _seccomp_program(own_pid: int) -> bytes:
    """A classic-BPF filter: deny process creation, exec, sockets, namespace and mount calls, SysV IPC, message
    queues, memfd, and signals to any process but this one (EPERM), allow everything else."""
    ld_w_abs, jeq_k, jset_k, ret_k = 0x20, 0x15, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    eperm = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
    enosys = 0x00050000 | 38
    prog: list[tuple[int, int, int, int]] = []
    ins = lambda code, jt, jf, k: prog.append((code, jt, jf, k))  # noqa: E731
    ins(ld_w_abs, 0, 0, 4)                       # A = arch
    ins(jeq_k, 1, 0, _AUDIT_ARCH_X86_64)
    ins(ret_k, 0, 0, kill)
    ins(ld_w_abs, 0, 0, 0)                       # A = nr
    ins(0x35, 0, 1, 0x40000000)                  # jge x32 ABI -> deny
    ins(ret_k, 0, 0, eperm)
    for nr in _SYSCALLS_DENIED.values():
        ins(jeq_k, 0, 1, nr)
        ins(ret_k, 0, 0, eperm)
    ins(jeq_k, 0, 1, _NR_CLONE3)                 # glibc falls back to clone() on ENOSYS
    ins(ret_k, 0, 0, enosys)
    ins(jeq_k, 0, 4, _NR_CLONE)                  # clone: threads only (NPROC forbids those too)
    ins(ld_w_abs, 0, 0, 16)                      # A = low word of args[0] (flags)
    ins(jset_k, 1, 0, _CLONE_THREAD)
    ins(ret_k, 0, 0, eperm)
    ins(ret_k, 0, 0, allow)
    for nr in (_NR_KILL, _NR_TKILL, _NR_TGKILL):  # signals: only to ourselves (pid == own pid)
        ins(jeq_k, 0, 3, nr)
        ins(ld_w_abs, 0, 0, 16)                  # A = args[0]
        ins(jeq_k, 1, 0, own_pid)
        ins(ret_k, 0, 0, eperm)
        ins(ld_w_abs, 0, 0, 0)                   # A = nr again
    ins(ret_k, 0, 0, allow)
    return b"".join(struct.pack("HBBI", *i) for i in prog)


def install_seccomp() -> None:
    import platform

    if platform.machine() != "x86_64":
        raise OSError("seccomp filter only written for x86_64")
    prog = _seccomp_program(os.getpid())
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


# ---------------------------------------------------------------------------------------------------- zygote setup

def _mountpoints() -> list[tuple[str, set[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = fields[4].encode().decode("unicode_escape")
            out.append((path, set(fields[5].split(","))))
    return out


def python_paths() -> list[str]:
    """The folders the interpreter may still read from: its prefixes and every sys.path entry (real paths)."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    return sorted(paths)


def unreachable_folder(paths: list[str], mode_of=lambda path: os.stat(path).st_mode) -> str | None:
    """The first folder that keeps a user with no claim on it (not the owner, not in the group) from the Python
    installation: a folder above one of `paths` without search permission for others, or one of `paths` without
    read and search permission (the import system lists the folders it imports from); None when all are open.
    (Permission bits only: an ACL that grants more is not seen.)"""
    for path in paths:
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts) + 1):
            folder = "/" + "/".join(parts[:depth])
            needed = stat.S_IXOTH | (stat.S_IROTH if depth == len(parts) else 0)
            try:
                if mode_of(folder) & needed != needed:
                    return folder
            except OSError:
                return folder
    return None


def choose_mode(cfg: dict) -> tuple[str, dict]:
    """Set up the zygote's shared isolation in the strongest mode this host offers and return (mode, layers):
    root (namespaces as root), userns (the same namespaces inside an unprivileged user namespace), landlock (no
    namespaces: Landlock file rules in each session process), else refused ("unsafe" when the caller opted in).
    `cfg["without"]` (MATHLOOP_SANDBOX_WITHOUT) turns off "namespaces" and/or "landlock" to force a weaker mode."""
    without = set(cfg.get("without", ()))
    layers: dict = {}
    if cfg.get("namespaces_failed"):
        layers["namespaces"] = cfg["namespaces_failed"]
    elif "namespaces" in without:
        layers["namespaces"] = "turned off by MATHLOOP_SANDBOX_WITHOUT"
    else:
        mode = "root" if os.geteuid() == 0 else "userns"
        before = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "mnt")}
        try:
            if mode == "userns":
                enter_user_namespace()
            layers["userns"] = True if mode == "userns" else "not needed: root"
            layers.update(setup_namespaces(cfg))
            if all(layers.get(k) is True for k in ("mountns", "readonly_fs", "hidden_home")):
                return mode, layers
            layers["namespaces"] = "the file system could not be confined: " + "; ".join(
                f"{k}: {layers.get(k)}" for k in ("mountns", "readonly_fs", "hidden_home") if layers.get(k) is not True)
        except OSError as e:
            layers["namespaces"] = layers["userns"] = f"no user namespace ({e.strerror or e})"
        if any(os.readlink(f"/proc/self/ns/{ns}") != before[ns] for ns in before):
            return "retry", layers  # half set up: the parent starts a fresh zygote without namespaces
    for key in ("netns", "pidns", "mountns", "readonly_fs", "hidden_home"):
        layers.setdefault(key, layers["namespaces"])
    abi = landlock_abi()
    closed = unreachable_folder(cfg["python_paths"]) if os.geteuid() == 0 else None
    if closed:  # no mount namespace to re-expose it in, and root's cells drop to a uid that cannot reach it
        layers["python"] = (f"as root the cells run as an unprivileged uid, which cannot reach the Python "
                            f"installation: {closed} is closed to others (chmod "
                            f"{'o+rx' if closed in cfg['python_paths'] else 'o+x'} {closed}, or use a Python "
                            f"installed outside /root)")
    if "landlock" in without:
        layers["landlock"] = "turned off by MATHLOOP_SANDBOX_WITHOUT"
    elif abi < 1:
        layers["landlock"] = "the kernel has no Landlock (Linux 5.13+ with landlock in its LSM list)"
    elif closed:
        layers["landlock"] = layers["python"]
    else:
        cfg["landlock_abi"] = abi
        cfg["readable"] = readable_paths(cfg)
        layers["landlock"] = True
        layers["readonly_fs"] = layers["hidden_home"] = "landlock (in each session process)"
        return "landlock", layers
    return ("unsafe" if cfg.get("unsafe") and not closed else "refused"), layers


def enter_user_namespace() -> None:
    """Become the owner of a new user namespace in which the caller's uid and gid map to themselves: full
    capabilities over the namespaces made from here on, none over the host's objects. Raises OSError."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def setup_namespaces(cfg: dict) -> dict:
    """Shared isolation, once, with CAP_SYS_ADMIN (as root, or in our own user namespace): new network and mount
    namespaces, every mount read-only, /root, /home and the caller's home hidden except the Python installation, and
    a check that a session can get its own PID namespace. Returns {layer: True or the reason it is missing}."""
    layers: dict = {}
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        layers["netns"] = True
    except OSError as e:
        layers["netns"] = str(e)
    try:
        pid = fork_into_new_pidns()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        layers["pidns"] = True
    except OSError as e:
        layers["pidns"] = str(e)
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        layers["mountns"] = True
    except OSError as e:
        layers["mountns"] = layers["readonly_fs"] = layers["hidden_home"] = str(e)
        return layers
    try:
        for home in home_folders(cfg):
            if os.path.isdir(home) and os.path.realpath(home) != "/":
                cover(os.path.realpath(home), cfg["python_paths"], "size=1m,mode=0755")
        layers["hidden_home"] = True
    except OSError as e:
        layers["hidden_home"] = str(e)
    try:
        layers["python_outside_tmp"] = relocate_python(cfg)
    except OSError as e:
        layers["python_outside_tmp"] = f"the Python installation under /tmp keeps its folder names there ({e})"
    failed = []
    for path, opts in sorted(_mountpoints(), key=lambda m: m[0].count("/")):
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt, flag in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC), ("noatime", MS_NOATIME),
                          ("nodiratime", MS_NODIRATIME), ("relatime", MS_RELATIME)):
            flags |= flag if opt in opts else 0  # in a user namespace these are locked: a remount must keep them
        try:
            _mount(None, path, None, flags)
        except OSError as e:
            if not (e.errno in (2, 13, 20) and not os.path.exists(path)):  # beneath a cover: not reachable anyway
                failed.append(f"{path} ({e.strerror})")
    layers["readonly_fs"] = True if not failed else "could not remount read-only: " + ", ".join(failed)
    return layers


def relocate_python(cfg: dict) -> bool:
    """Move the parts of the Python installation that live under /tmp out of it, so that a session's private /tmp
    shows only the session's own files (not the host folders above a venv or checkout under /tmp): bind them
    read-only onto a tmpfs covering /mnt (or /media, /srv, /opt), then point this interpreter there (sys.path, the
    prefixes, every loaded package's __path__ and module's __file__) before anything is preloaded. True when done
    or not needed."""
    import importlib

    under = [p for p in cfg["python_paths"] if p.startswith("/tmp/")]
    under = [p for p in under if not any(p.startswith(q + "/") for q in under if q != p)]  # outermost only
    if not under:
        return True
    base = next((d for d in ("/mnt", "/media", "/srv", "/opt") if os.path.isdir(d) and not os.path.islink(d)), None)
    if base is None:
        raise OSError(2, "no /mnt, /media, /srv or /opt to move it to")
    cover(base, cfg["python_paths"], "size=1m,mode=0755")
    moves = {}
    for i, old in enumerate(under):
        new = f"{base}/mathloop-python-{i}"
        os.mkdir(new)
        _mount(old, new, None, MS_BIND | MS_REC)
        _mount(None, new, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        moves[old] = new

    def moved(path: str) -> str:
        real = os.path.realpath(path)
        for old, new in moves.items():
            if real == old or real.startswith(old + "/"):
                return new + real[len(old):]
        return path

    sys.path[:] = [moved(p) if p else p for p in sys.path]
    for attr in ("prefix", "exec_prefix", "base_prefix", "base_exec_prefix", "executable"):
        setattr(sys, attr, moved(getattr(sys, attr)))
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [moved(p) for p in search]
        if isinstance(getattr(module, "__file__", None), str):
            module.__file__ = moved(module.__file__)
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    cfg["python_paths"] = sorted({moved(p) for p in cfg["python_paths"]})
    return True


def home_folders(cfg: dict) -> list[str]:
    """The folders no cell may read: /root, /home, and the caller's home wherever it is."""
    import pwd

    homes = ["/root", "/home", cfg.get("home") or ""]
    try:
        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return sorted({os.path.realpath(h) for h in homes if h and os.path.isabs(h)} - {"/"})


def fork_into_new_pidns() -> int:
    """os.fork(), but the child is pid 1 of a new PID namespace (a raw clone() between Python's own fork hooks).
    Unlike unshare(CLONE_NEWPID) this leaves the zygote's own namespace for children unchanged, which matters in a
    user namespace, where the zygote could not setns() back into the host's PID namespace."""
    if os.uname().machine != "x86_64":
        raise OSError(38, "clone(CLONE_NEWPID) is only called with x86_64's argument order")
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _pylibc.syscall(56, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0)  # clone(flags, stack=0, ...): fork semantics
    err = ctypes.get_errno()
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone(CLONE_NEWPID): {os.strerror(err)}")
    return pid


# ---------------------------------------------------------------------------------------------------- landlock

# Landlock file-system rights (ABI 1: bits 0-12; ABI 2: REFER; ABI 3: TRUNCATE; ABI 5: IOCTL_DEV), network rights
# (ABI 4: bind and connect TCP) and scopes (ABI 6: abstract UNIX sockets, signals).
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_TRUNCATE, LL_IOCTL_DEV = 1 << 14, 1 << 15
_LL_SYS_CREATE, _LL_SYS_ADD_RULE, _LL_SYS_RESTRICT = 444, 445, 446


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is turned off)."""
    abi = _libc.syscall(_LL_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    return max(0, int(abi))


def _landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    rights |= (1 << 13) if abi >= 2 else 0
    rights |= LL_TRUNCATE if abi >= 3 else 0
    rights |= LL_IOCTL_DEV if abi >= 5 else 0
    return rights


def readable_paths(cfg: dict) -> list[str]:
    """What a Landlock cell may read and execute: the whole file system except the home folders, the temporary
    folders (other cells' and processes' files) and /proc (other processes), each excluded folder's siblings listed
    one by one since Landlock only grants; then the Python installation wherever it lives."""
    excluded = set(home_folders(cfg)) | {os.path.realpath(p) for p in ("/tmp", "/var/tmp", "/dev/shm", "/proc",
                                                                         cfg["scratch"])}
    out: list[str] = []

    def walk(folder: str) -> None:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        for name in names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real in excluded or any(real.startswith(x + "/") for x in excluded):
                continue
            if any(x.startswith(real + "/") for x in excluded):
                if os.path.isdir(real) and real.startswith(folder.rstrip("/") + "/"):
                    walk(real)  # an ancestor of an excluded folder: grant its other entries one by one
                continue
            out.append(real)

    walk("/")
    out += cfg["python_paths"]
    return sorted(set(out))


def landlock_confine(abi: int, readable: list[str], writable: str) -> None:
    """Restrict this process (and anything it could start) to reading and executing `readable` and doing anything
    in `writable`; with ABI 4+ no TCP bind/connect, with ABI 6+ no abstract UNIX sockets or signals out of the
    domain. Needs no_new_privs first. Raises OSError."""
    fs_all = _landlock_fs_rights(abi)
    net = 3 if abi >= 4 else 0  # LANDLOCK_ACCESS_NET_BIND_TCP | CONNECT_TCP, with no rule granting either
    scoped = 3 if abi >= 6 else 0
    attr = struct.pack("=QQQ", fs_all, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(_LL_SYS_CREATE, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    file_rights = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | (LL_TRUNCATE if abi >= 3 else 0) | (
        LL_IOCTL_DEV if abi >= 5 else 0)
    try:
        for path, rights in [(p, LL_EXECUTE | LL_READ_FILE | LL_READ_DIR) for p in readable] + [(writable, fs_all)]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since the list was made
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= file_rights
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                if _libc.syscall(_LL_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0)):
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
        if _libc.syscall(_LL_SYS_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)):
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)


def drop_capabilities() -> None:
    """Give up every capability (effective, permitted, inheritable, ambient and bounding): in user-namespace mode the
    session process would otherwise keep CAP_SYS_ADMIN over its namespaces and could unmount the covers."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last
            break
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(bytes(24), 24)
    _check(int(_libc.syscall(126, header, data)), "capset")  # all zero
    with open("/proc/self/status") as f:
        if any(line.startswith(("CapEff:", "CapPrm:")) and int(line.split()[1], 16) for line in f):
            raise OSError(1, "capabilities still held after capset")


def cover(target: str, keep: list[str], options: str) -> None:
    """Mount a tmpfs (mount `options`) over the folder `target`, re-exposing read-only, at their own places, the
    folders of `keep` that lie beneath it. Each is held by an O_PATH descriptor while covered, then bind-mounted
    back through /proc/self/fd."""
    below = [p for p in keep if p.startswith(target.rstrip("/") + "/")]
    below = [p for p in below if not any(p.startswith(q + "/") for q in below if q != p)]  # outermost only
    held = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in below]
    try:
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        for path, fd in held:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    finally:
        for _, fd in held:
            os.close(fd)


def preload(modules: list[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if "sympy" in sys.modules:  # pull in the lazily imported solver/simplify machinery once, before forking
        import sympy

        x = sympy.Symbol("x")
        sympy.solve(x**2 - 2 * x - 3, x)
        sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
        sympy.Rational(3, 4) + sympy.sqrt(8)
        sympy.factorint(360)
        sympy.integrate(x**2, (x, 0, 1))
        sympy.expand((x + 1) ** 3)
    gc.collect()
    gc.freeze()  # keep preloaded objects out of gc passes so forked children share their pages


# ---------------------------------------------------------------------------------------------------- the child

class _Capture:
    """sys.stdout replacement that keeps the first and last `keep` characters and counts the rest."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, keep: int) -> None:
        self.keep, self.head, self.tail, self.total = keep, "", "", 0

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.total += len(s)
        if len(self.head) < self.keep:
            self.head += s[: self.keep - len(self.head)]
        self.tail = (self.tail + s[-self.keep:])[-self.keep:]
        return len(s)

    def text(self) -> str:
        if self.total <= self.keep:
            return self.head
        return self.head + self.tail[-min(self.keep, self.total - self.keep):]

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _last_line(exc: BaseException) -> str:
    try:
        return traceback.format_exception_only(type(exc), exc)[-1].strip()
    except BaseException:  # noqa: BLE001 - a hostile __str__ must not kill the worker
        return type(exc).__name__


def session_namespaces(uid: int, cfg: dict) -> tuple[str | None, dict]:
    """In the forked child, with CAP_SYS_ADMIN (root and userns modes): its own mount and IPC namespaces, a private
    tmpfs on /tmp that re-exposes the Python installation when it lives under /tmp, and (when the child is the init
    of its own PID namespace) a /proc of that namespace in which only processes of the same uid are visible.
    Returns (workdir or None, layers)."""
    layers: dict = {}
    if cfg["mode"] not in NAMESPACE_MODES:
        reason = f"{cfg['mode']} mode: no namespaces"
        if cfg["mode"] == "landlock":
            return None, {"ipcns": reason, "private_tmpfs": "landlock: a private scratch folder, nothing else "
                          "writable", "private_proc": "landlock: no other process's /proc entries"}
        return None, {"ipcns": reason, "private_tmpfs": reason, "private_proc": reason}
    try:
        _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
        layers["ipcns"] = True
    except OSError as e:
        layers["ipcns"] = str(e)
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    except OSError as e:
        return None, dict(layers, private_tmpfs=str(e), private_proc=str(e))
    workdir = None
    try:
        cover("/tmp", cfg["python_paths"], f"size={cfg['disk_mb']}m,mode=0700,uid={uid},gid={uid}")
        workdir = "/tmp"
        layers["private_tmpfs"] = True
    except OSError as e:
        layers["private_tmpfs"] = str(e)
    if cfg["own_pidns"]:
        try:
            try:
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "hidepid=invisible")
            except OSError:  # kernels before 5.8 spell it 2
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "hidepid=2")
            layers["private_proc"] = True
        except OSError as e:
            layers["private_proc"] = str(e)
    else:
        layers["private_proc"] = "no PID namespace"
    return workdir, layers


def confine_process(sock: socket.socket, uid: int, cfg: dict, workdir: str | None) -> dict:
    """Everything the session process does to itself before running model code. Returns its layer report."""
    layers: dict = {}
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    root = os.geteuid() == 0
    if workdir is None:  # no mount namespace: a folder the zygote made, and removes when this process is reaped
        workdir = cfg["workdir"]
        if root:
            os.chown(workdir, uid, uid)
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    vsz = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limits = {
        resource.RLIMIT_AS: vsz + cfg["memory_mb"] * 2**20,
        resource.RLIMIT_CPU: cfg["cpu_budget_s"],
        resource.RLIMIT_FSIZE: cfg["disk_mb"] * 2**20,
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: 0,
        resource.RLIMIT_MEMLOCK: 0,
        resource.RLIMIT_MSGQUEUE: 0,
    }
    for res, value in limits.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU at soft, SIGKILL at hard
        resource.setrlimit(res, (value, hard))
    layers["rlimits"] = True
    if root:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        layers["uid"] = True
    else:
        drop_capabilities()  # those of our own user namespace, if any
        layers["uid"] = f"not root: runs as the caller's uid {os.getuid()}, with no capabilities"
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    layers["no_new_privs"] = True
    if cfg["mode"] == "landlock":
        readable = cfg["readable"] + [f"/proc/{os.getpid()}"]  # its own /proc entry, no other process's
        landlock_confine(cfg["landlock_abi"], readable, workdir)  # failing here fails the session: never run open
        layers.update(landlock=True, readonly_fs=True, hidden_home=True)
    if cfg["seccomp"]:
        try:
            install_seccomp()
            layers["seccomp"] = True
        except OSError as e:
            layers["seccomp"] = str(e)
    else:
        layers["seccomp"] = "disabled"
    os.environ.clear()
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    return layers


def session_main(sock: socket.socket, uid: int, cfg: dict) -> None:
    """The zygote's forked child. In a PID namespace it is that namespace's init: it sets up the session's
    namespaces, forks the session process (pid 2, so that signals to itself work as usual) and waits for it; the
    parent's SIGKILL to this init kills the whole namespace. Without one it is the session process itself."""
    try:
        workdir, layers = session_namespaces(uid, cfg)
        if cfg["own_pidns"]:
            pid = os.fork()
            if pid:
                sock.close()
                os.closerange(3, 1 << 16)
                while True:
                    try:
                        os.waitpid(pid, 0)
                        return
                    except ChildProcessError:
                        return
                    except InterruptedError:
                        continue
        layers.update(confine_process(sock, uid, cfg, workdir))
    except BaseException as e:  # noqa: BLE001
        send_msg(sock, {"ready": False, "error": f"confinement failed: {e!r}"})
        return
    child_main(sock, layers, cfg)


def child_main(sock: socket.socket, layers: dict, cfg: dict) -> None:
    import builtins

    send_msg(sock, {"ready": True, "layers": layers})
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    keep = cfg["keep_chars"]
    _send, _recv, _capture, _clock = send_msg, recv_msg, _Capture, time.perf_counter
    while True:
        request = _recv(sock)
        if request is None:
            return
        out = _capture(keep)
        sys.stdout = out
        start = _clock()
        try:
            exec(compile(request["code"], "<cell>", "exec"), namespace)  # noqa: S102 - confined process
            status, error = "ok", ""
        except BaseException as e:  # noqa: BLE001 - SystemExit / KeyboardInterrupt are program errors too
            status, error = "error", _last_line(e)
            if len(error) > 2 * keep:  # a 5 MB message: its ends, as for stdout, well within the reply limit
                error = error[:keep] + error[-keep:]
        elapsed = _clock() - start
        sys.stdout = sys.__stdout__
        try:
            text = out.text()
        except BaseException:  # noqa: BLE001
            text = ""
        _send(sock, {"id": request.get("id"), "status": status, "stdout": text, "error": error, "exec_seconds": elapsed,
                     "dropped": max(0, out.total - 2 * keep)})


# ---------------------------------------------------------------------------------------------------- zygote loop

def zygote_main(cfg: dict) -> None:
    ctl = socket.socket(fileno=cfg["ctl_fd"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we go
    cfg["python_paths"] = python_paths()
    mode, layers = choose_mode(cfg)
    cfg["mode"] = mode
    cfg["own_pidns"] = mode in NAMESPACE_MODES and layers.get("pidns") is True
    if mode not in ("refused", "retry"):
        preload(cfg["preload"])
    cfg["layers"] = layers
    children: dict[int, int] = {}  # pid -> uid
    next_uid = 0
    ready = {"mode": mode, "layers": layers, "preloaded": [m for m in cfg["preload"] if m in sys.modules]}
    ctl.sendmsg([json.dumps(ready).encode()])
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 2)  # the parent stops reading our stderr once we are up
    workdirs: dict[int, str] = {}  # pid -> folder to remove, without a mount namespace only

    def reap() -> None:
        while children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.pop(pid, None)
            if pid in workdirs:
                shutil.rmtree(workdirs.pop(pid), ignore_errors=True)

    try:
        while True:
            readable, _, _ = select.select([ctl], [], [], 1.0)
            reap()
            if not readable:
                continue
            data = ctl.recv(1 << 16)
            if not data:
                return
            request = json.loads(data)
            if request.get("op") != "spawn":
                continue
            if mode in ("refused", "retry"):
                continue  # the parent never asks such a zygote for a process
            used = set(children.values())
            while cfg["uid_base"] + next_uid in used:
                next_uid = (next_uid + 1) % cfg["uid_span"]
            uid = cfg["uid_base"] + next_uid if os.geteuid() == 0 else os.getuid()
            next_uid = (next_uid + 1) % cfg["uid_span"]
            if mode not in NAMESPACE_MODES:
                cfg["workdir"] = tempfile.mkdtemp(prefix="mathloop-cell-", dir=cfg["scratch"])
            parent_end, child_end = socket.socketpair()
            pid = fork_into_new_pidns() if cfg["own_pidns"] else os.fork()  # the child is pid 1 of a new one
            if pid == 0:
                try:
                    ctl.close()
                    parent_end.close()
                    session_main(child_end, uid, cfg)
                finally:
                    os._exit(0)
            children[pid] = uid
            if mode not in NAMESPACE_MODES:
                workdirs[pid] = cfg["workdir"]
            child_end.close()
            pidfd = os.pidfd_open(pid)
            socket.send_fds(ctl, [json.dumps({"pid": pid, "uid": uid}).encode()], [parent_end.fileno(), pidfd])
            parent_end.close()
            os.close(pidfd)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for folder in workdirs.values():
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    zygote_main(json.loads(sys.argv[1]))
