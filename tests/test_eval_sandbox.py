"""Tests for fef_jax.eval.sandbox: every escape is contained and reported as a failure.

Tests that turn the Python-level guard off check the deeper layers (dropping
root, namespaces, the private root, resource limits) on their own; they are
skipped where the layer they rely on is not available. Every escape attempt is
bounded (e.g. a fork bomb forks at most 200 times) so that a failing layer
cannot hurt the machine. The private-root tests also run each program once
without the private root as a control, to show that their checks see an escape.
"""
import json
import os
import socket
import stat
import time

import pytest

from fef_jax.eval import sandbox

LIMITS = dict(timeout_s=5.0, memory_mb=256)
LAYERS = sandbox.isolation()
needs_drop = pytest.mark.skipif(LAYERS.uid is None, reason="programs run as the caller")
needs_namespaces = pytest.mark.skipif(not LAYERS.namespaces, reason="no namespaces here")
needs_private_root = pytest.mark.skipif(
    not LAYERS.private_root,
    reason="no private root: isolation() found no mount namespace (needs a root caller with "
           "CLONE_NEWNS and mounts), so programs see the host's filesystem")


@pytest.fixture
def outside(tmp_path):
  """A directory outside the sandbox that everyone may write to, with a sentinel file."""
  path = tmp_path / "outside"
  path.mkdir()
  (path / "sentinel.txt").write_text("keep me")
  path.chmod(0o777)
  return path


def test_correct_program_passes_and_reports_output():
  result = sandbox.run_python("import math\nprint(math.factorial(5))\n", **LIMITS)
  assert (result.passed, result.status, result.reason) == (True, "passed", "")
  assert result.stdout == "120\n"
  assert result.returncode == 0
  assert result.wall_s < LIMITS["timeout_s"]


def test_failures_are_reported_with_a_reason():
  cases = {"assert 1 + 1 == 3\n": "AssertionError",
           "def f(:\n": "SyntaxError",
           "raise ValueError('boom')\n": "ValueError: boom"}
  for program, reason in cases.items():
    result = sandbox.run_python(program, **LIMITS)
    assert (result.passed, result.status) == (False, "failed"), program
    assert reason in result.reason


@pytest.mark.parametrize("call", ["exit(0)", "import sys; sys.exit(0)", "raise SystemExit"])
def test_exiting_early_is_a_failure(call):
  result = sandbox.run_python(f"{call}\nassert False\n", **LIMITS)
  assert result.status == "failed"
  assert "called exit" in result.reason


def test_program_runs_isolated_in_a_fresh_directory_that_is_removed():
  program = ("import os\nprint(os.getcwd())\nprint(os.getuid())\nprint(os.getpid())\n"
             "print(sorted(os.environ))\nopen('scratch.txt', 'w').write('ok')\n")
  result = sandbox.run_python(program, **LIMITS)
  assert result.passed, result.stderr
  cwd, uid, pid, env = result.stdout.splitlines()
  assert os.path.basename(cwd) == "work"
  assert not os.path.exists(cwd)
  assert "PYTHONPATH" not in env
  if LAYERS.uid is not None:
    assert int(uid) == LAYERS.uid
  if LAYERS.namespaces:
    assert int(pid) == 1


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=needs_drop)])
def test_write_outside_the_work_directory_is_contained(outside, guard):
  target = outside / "escaped.txt"
  program = f"with open({str(target)!r}, 'w') as f:\n  f.write('pwned')\n"
  result = sandbox.run_python(program, guard=guard, **LIMITS)
  assert result.status == "failed"
  # Without the guard, a private root does not even hold the directory.
  error = "FileNotFoundError" if not guard and LAYERS.private_root else "PermissionError"
  assert error in result.reason
  assert not target.exists()


@pytest.mark.parametrize("program,guard", [
    ("import shutil\nshutil.rmtree({dir!r})\n", True),
    ("import os\nassert os.system('rm -rf {dir}') == 0\n", True),
    ("import os\nassert os.system('rm -rf ~') == 0\nassert os.system('rm -rf {dir}') == 0\n", True),
    pytest.param("import shutil\nshutil.rmtree({dir!r})\n", False, marks=needs_drop),
    # `rm -r`, not `rm -rf`: in a private root the directory does not exist, and
    # `rm -rf` of a missing path succeeds, which would hide whether anything was deleted.
    pytest.param("import os\nassert os.system('rm -r {dir}') == 0\n", False, marks=needs_drop),
])
def test_deleting_outside_the_work_directory_is_contained(outside, program, guard):
  result = sandbox.run_python(program.format(dir=str(outside)), guard=guard, **LIMITS)
  assert result.status == "failed"
  assert (outside / "sentinel.txt").read_text() == "keep me"


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=needs_namespaces)])
def test_network_connection_to_the_host_is_contained(guard):
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    program = ("import socket\n"
               f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'exfiltrated')\n")
    result = sandbox.run_python(program, guard=guard, **LIMITS)
    assert result.status == "failed"
    server.settimeout(0.2)
    with pytest.raises(TimeoutError):
      server.accept()


def _run_as(layers, program):
  """Runs `program` without the guard under the given `sandbox.Isolation`.

  The private helper lets a test run a weaker configuration as a control: the same
  program, without the private root, shows that the test's check sees an escape.
  """
  limits = sandbox._check_limits(5.0, 256, 16, 16, 2000)
  return sandbox._execute(program, layers, False, limits)


PRIVATE = pytest.param(True, id="private root")
CONTROL = pytest.param(False, id="control without it")


@needs_private_root
@pytest.mark.parametrize("private", [PRIVATE, CONTROL])
def test_writes_to_tmp_and_dev_shm_do_not_outlive_the_run(private):
  tag = f"fef_sandbox_test_{os.getpid()}"
  seen = [f"/tmp/{tag}_host", f"/dev/shm/{tag}_host"]  # the host's, readable by anyone
  written = [f"/tmp/{tag}_run", f"/dev/shm/{tag}_run"]
  if os.path.isdir("/var/tmp") and os.stat("/var/tmp").st_mode & stat.S_IWOTH:
    written.append(f"/var/tmp/{tag}_run")
  program = f"""
import json, os
outcome = {{path: os.path.exists(path) for path in {seen!r}}}
for path in {written!r}:
  try:
    with open(path, "w") as f:
      f.write("left behind")
    with open(path) as f:
      outcome[path] = f.read()
  except OSError as e:
    outcome[path] = type(e).__name__
print(json.dumps(outcome))
"""
  try:
    for path in seen:
      with open(path, "w") as f:
        f.write("host")
      os.chmod(path, 0o644)
    result = _run_as(sandbox.Isolation(True, LAYERS.uid, private), program)
    assert result.passed, result.stderr
    outcome = json.loads(result.stdout)
    on_host = [path for path in written if os.path.exists(path)]
  finally:
    for path in seen + written:
      if os.path.exists(path):
        os.remove(path)
  if private:  # its own /tmp and /dev/shm work, and vanish with it; /var does not exist
    assert [outcome[path] for path in seen] == [False, False]
    assert outcome[written[0]] == outcome[written[1]] == "left behind"
    assert all(outcome[path] == "FileNotFoundError" for path in written[2:])
    assert on_host == []
  else:
    assert [outcome[path] for path in seen] == [True, True]
    assert on_host == written


def _readable_by_others(path):
  """Whether a user other than the owner may read `path` on the host."""
  parents = [os.path.dirname(path)]
  while parents[-1] != "/":
    parents.append(os.path.dirname(parents[-1]))
  return (os.stat(path).st_mode & stat.S_IROTH
          and all(os.stat(p).st_mode & stat.S_IXOTH for p in parents))


@needs_private_root
@pytest.mark.parametrize("private", [PRIVATE, CONTROL])
def test_the_repository_and_home_directories_are_not_visible(private):
  source = os.path.realpath(sandbox.__file__)
  directories = [os.path.dirname(source)]
  while os.path.dirname(directories[-1]) != "/":
    directories.append(os.path.dirname(directories[-1]))
  directories += [d for d in ("/root", "/home", "/work") if d not in directories]
  _, install_root = sandbox._interpreter()
  program = f"""
import json, os
def attempt(what, *args):
  try:
    what(*args)
    return "ok"
  except OSError as e:
    return type(e).__name__
outcome = {{{source!r}: attempt(lambda p: open(p).read(), {source!r})}}
for path in {directories!r}:
  outcome[path] = attempt(os.listdir, path)
for path in ("/escaped", "/etc/escaped", {install_root + "/escaped"!r}):
  outcome["write " + path] = attempt(lambda p: open(p, "w").close(), path)
outcome["read-only /"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
outcome["read-only interpreter"] = bool(os.statvfs({install_root!r}).f_flag & os.ST_RDONLY)
print(json.dumps(outcome))
"""
  result = _run_as(sandbox.Isolation(True, LAYERS.uid, private), program)
  assert result.passed, result.stderr
  outcome = json.loads(result.stdout)
  if private:
    assert outcome.pop("read-only /") and outcome.pop("read-only interpreter")
    assert {path: "ok" for path, how in outcome.items() if how == "ok"} == {}
  elif _readable_by_others(source):  # the check above would see a readable repository
    assert outcome[source] == "ok"
  else:
    pytest.skip(f"{source} is not readable by others here, so the control shows nothing")


@needs_private_root
def test_without_a_private_root_the_probe_falls_back_with_a_warning(monkeypatch, caplog):
  def unbuildable(work, limits):  # a bind mount of a missing path fails in the launcher
    return [("ro", "/missing", "/fef-sandbox-test-missing")] + entries(work, limits)

  entries = sandbox._root_entries
  try:
    with monkeypatch.context() as patch:
      patch.setattr(sandbox, "_root_entries", unbuildable)
      sandbox.isolation.cache_clear()
      assert sandbox.isolation() == sandbox.Isolation(True, LAYERS.uid, False)
  finally:
    sandbox.isolation.cache_clear()
  assert "stronger configurations failed" in caplog.text
  assert "fef-sandbox-test-missing" in caplog.text
  assert sandbox.isolation() == LAYERS


@needs_private_root
@pytest.mark.parametrize("guard", [True, False])
def test_ordinary_programs_and_the_work_directory_work_in_the_private_root(guard):
  program = """
import collections, json, math, tempfile
with open("notes.txt", "w") as f:
  f.write("kept")
with open("notes.txt") as f:
  assert f.read() == "kept"
with tempfile.TemporaryFile() as f:  # TMPDIR is the working directory
  f.write(b"scratch")
print(json.dumps(collections.Counter("abca")), math.gcd(12, 18))
"""
  result = sandbox.run_python(program, guard=guard, **LIMITS)
  assert result.passed, result.stderr
  assert result.stdout == '{"a": 2, "b": 1, "c": 1} 6\n'


def test_runaway_memory_is_stopped_quickly():
  result = sandbox.run_python("block = bytearray(8 * 2**30)\nprint(len(block))\n",
                              timeout_s=10.0, memory_mb=256)
  assert result.status == "memory"
  assert "MemoryError" in result.reason
  assert result.wall_s < 5.0


@pytest.mark.parametrize("program", ["while True:\n  pass\n",
                                     "import time\nwhile True:\n  time.sleep(1)\n"])
def test_infinite_loop_times_out(program):
  result = sandbox.run_python(program, timeout_s=1.0, memory_mb=256)
  assert result.status == "timeout"
  assert result.returncode is None
  assert 1.0 <= result.wall_s < 3.0


def _processes_named(name):
  """Pids of live processes whose command name is `name`."""
  pids = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/comm") as f:
        if entry.isdigit() and f.read().strip() == name:
          pids.append(int(entry))
    except OSError:  # not a process, or it exited meanwhile
      pass
  return pids


def _assert_none_survive(name):
  deadline = time.monotonic() + 2.0
  while _processes_named(name) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert _processes_named(name) == []


def test_fork_bomb_is_blocked_by_the_guard():
  # Bounded: without the guard this makes at most 2**6 processes, which the
  # process limit, the time limit and the process-group kill then stop.
  program = "import os, time\nfor _ in range(6):\n  os.fork()\ntime.sleep(30)\n"
  result = sandbox.run_python(program, timeout_s=2.0, memory_mb=256, max_processes=8)
  assert result.status == "failed"
  assert "os.fork" in result.reason


def test_fork_bomb_without_the_guard_is_contained_and_killed():
  name = f"fefbomb{os.getpid() % 100000}"
  program = f"""
import ctypes, os, time
ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME, inherited
forked = 0
for _ in range(200):
  try:
    if os.fork() == 0:
      time.sleep(60)
      os._exit(0)
    forked += 1
  except OSError:
    break
print(forked, flush=True)
time.sleep(60)
"""
  result = sandbox.run_python(program, timeout_s=2.0, memory_mb=256, max_processes=8,
                              guard=False)
  assert result.status == "timeout"
  if LAYERS.uid is not None:  # RLIMIT_NPROC counts only the sandbox user's processes
    assert int(result.stdout) < 8
  _assert_none_survive(name)


@needs_namespaces
def test_daemonised_child_does_not_survive_its_program():
  name = f"fefdaemon{os.getpid() % 100000}"
  program = f"""
import ctypes, os, time
ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)
if os.fork() == 0:
  os.setsid()
  time.sleep(60)
"""
  result = sandbox.run_python(program, guard=False, **LIMITS)
  assert result.passed, result.stderr
  _assert_none_survive(name)


def test_bad_input_is_rejected():
  with pytest.raises(TypeError, match="str"):
    sandbox.run_python(b"print(1)", **LIMITS)
  for timeout_s in (0, -1.0, float("nan"), float("inf"), "5"):
    with pytest.raises(ValueError, match="timeout_s"):
      sandbox.run_python("pass", timeout_s=timeout_s, memory_mb=256)
  with pytest.raises(ValueError, match="memory_mb"):
    sandbox.run_python("pass", timeout_s=1.0, memory_mb=8)
  with pytest.raises(ValueError, match="workers"):
    sandbox.run_many(["pass"], workers=0, **LIMITS)
  with pytest.raises(TypeError, match=r"programs\[1\]"):
    sandbox.run_many(["pass", None], **LIMITS)


def test_run_many_keeps_order():
  programs = ["print(0)", "assert False", "print(2)", "while True: pass", "print(4)"]
  # 5 s, not 1: on a loaded 2-core CI machine (the spinner beside it, another test
  # worker) starting Python and printing once took over a second; order is what this
  # test checks.
  results = sandbox.run_many(programs, workers=2, timeout_s=5.0, memory_mb=256)
  assert [r.status for r in results] == ["passed", "failed", "passed", "timeout", "passed"]
  assert [r.stdout for r in results if r.passed] == ["0\n", "2\n", "4\n"]
  assert sandbox.run_many([], **LIMITS) == []


def test_a_hostile_batch_under_load_is_collected_in_full_and_leaves_nothing_behind(outside):
  # 64 programs, 8 at a time: the work of a code benchmark's batch, with hostile members
  # (each bounded, as in the tests above). Every result comes back, in order, with the
  # status its program earns; nothing escapes and no process outlives its program.
  name = f"fefload{os.getpid() % 100000}"
  kinds = {
      "passes": ("print(sum(range(1000)))\n", "passed"),
      "raises": ("raise ValueError('no')\n", "failed"),
      "spins": ("while True:\n  pass\n", "timeout"),
      "hoards memory": ("block = bytearray(8 * 2**30)\n", "memory"),
      "writes outside": (f"open({str(outside / 'escaped.txt')!r}, 'w').write('x')\n", "failed"),
      "daemonises": (f"""
import ctypes, os, time
ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)
if os.fork() == 0:
  os.setsid()
  time.sleep(60)
""", None),  # the guard refuses fork (failed); without it the program would pass
      "forks a few": ("import os, time\nfor _ in range(3):\n  os.fork()\ntime.sleep(30)\n",
                      "failed"),
      "exits": ("import sys\nsys.exit(0)\n", "failed"),
  }
  order = [list(kinds)[i % len(kinds)] for i in range(64)]
  # A generous time limit: the spinning members burn CPU beside the others (and beside
  # other tests in CI), and a passing program must not time out while it waits for a core.
  results = sandbox.run_many([kinds[k][0] for k in order], workers=8, timeout_s=10.0,
                             memory_mb=256, max_processes=8)
  assert len(results) == 64
  for kind, result in zip(order, results):
    expected = kinds[kind][1]
    if expected is not None:
      assert result.status == expected, (kind, result)
    else:
      assert result.status in ("passed", "failed"), (kind, result)
  assert [r.stdout for k, r in zip(order, results) if k == "passes"] == ["499500\n"] * 8
  assert not (outside / "escaped.txt").exists()
  assert (outside / "sentinel.txt").read_text() == "keep me"
  _assert_none_survive(name)
