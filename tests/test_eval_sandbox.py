"""Tests for fef_jax.eval.sandbox: every escape is contained and reported as a failure.

Tests that turn the Python-level guard off check the deeper layers (dropping
root, namespaces, resource limits) on their own; they are skipped where the
layer they rely on is not available. Every escape attempt is bounded (e.g. a
fork bomb forks at most 200 times) so that a failing layer cannot hurt the
machine.
"""
import os
import socket
import time

import pytest

from fef_jax.eval import sandbox

LIMITS = dict(timeout_s=5.0, memory_mb=256)
LAYERS = sandbox.isolation()
needs_drop = pytest.mark.skipif(LAYERS.uid is None, reason="programs run as the caller")
needs_namespaces = pytest.mark.skipif(not LAYERS.namespaces, reason="no namespaces here")


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
  assert "PermissionError" in result.reason
  assert not target.exists()


@pytest.mark.parametrize("program,guard", [
    ("import shutil\nshutil.rmtree({dir!r})\n", True),
    ("import os\nassert os.system('rm -rf {dir}') == 0\n", True),
    ("import os\nassert os.system('rm -rf ~') == 0\nassert os.system('rm -rf {dir}') == 0\n", True),
    pytest.param("import shutil\nshutil.rmtree({dir!r})\n", False, marks=needs_drop),
    pytest.param("import os\nassert os.system('rm -rf {dir}') == 0\n", False, marks=needs_drop),
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
