"""One worker per state folder: the advisory lock on STREAMREC_STATE_DIR (real processes, real flock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from streamer import state_lock

# A holder in its own process (flock is per open file description: a second acquire in this
# process on a new descriptor is refused too, but a separate process is what the workers are).
HOLDER = textwrap.dedent("""
    import sys, time
    from streamer import state_lock
    state_lock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(600)
""")


def start_holder(folder):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_acquirer_gets_one_line_naming_setting_folder_and_pid(tmp_path):
    folder = tmp_path / "state"
    holder = start_holder(folder)
    try:
        with pytest.raises(state_lock.StateDirInUse) as err:
            state_lock.acquire(folder)
        text = str(err.value)
        assert "\n" not in text
        assert "STREAMREC_STATE_DIR" in text
        assert str(folder.resolve()) in text
        assert f"pid {holder.pid}" in text
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_lock_is_released_when_the_holder_dies(tmp_path, how):
    folder = tmp_path / "state"
    holder = start_holder(folder)
    with pytest.raises(state_lock.StateDirInUse):
        state_lock.acquire(folder)
    holder.send_signal(how)
    holder.wait()
    fd = state_lock.acquire(folder)  # the dead holder's lock is gone: a restart is never blocked
    try:
        assert (folder / state_lock.LOCK_NAME).read_text().strip() == str(os.getpid())
    finally:
        os.close(fd)


def test_free_folder_is_created_and_locked_by_this_process(tmp_path):
    folder = tmp_path / "a" / "b"
    fd = state_lock.acquire(folder)
    try:
        assert folder.is_dir()
        assert (folder / state_lock.LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(state_lock.StateDirInUse, match=f"pid {os.getpid()}"):
            state_lock.acquire(folder)  # a second descriptor, even in the same process, is refused
    finally:
        os.close(fd)
    os.close(state_lock.acquire(folder))  # closed: free again


def test_unusable_folder_names_the_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(state_lock.StateDirUnusable, match="STREAMREC_STATE_DIR: cannot use the state folder") as err:
        state_lock.acquire(blocker / "state")
    assert not isinstance(err.value, state_lock.StateDirInUse) and "\n" not in str(err.value)
