"""A private X server (Xvfb) for tests that open real windows: ``with xvfb_display() as display: ...``."""

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG_S

log = logging.getLogger(__name__)


@contextlib.contextmanager
def xvfb_display(screen: str = "1280x720x24", timeout: float = HANG_S) -> Iterator[str]:
    """Start Xvfb on a free display number, yield its name (":<n>"), kill it at the end; skip if Xvfb is absent.

    Xvfb picks the free number itself (``-displayfd``), so parallel test runs cannot collide; ``-noreset`` keeps it
    from resetting (and refusing connections for a moment) each time the last window closes.
    """
    binary = shutil.which("Xvfb")
    if binary is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb xauth): window tests need an X server")
    read_end, write_end = os.pipe()
    errors = tempfile.TemporaryFile()  # not a pipe: a chatty server must never block on a full one
    process = subprocess.Popen(
        [binary, "-displayfd", str(write_end), "-screen", "0", screen, "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as pipe:
            number = pipe.readline().strip()  # written once the server is ready; empty if it died
        if not number:
            process.wait(timeout=timeout)
            errors.seek(0)
            raise RuntimeError(f"Xvfb did not start: {errors.read().decode(errors='replace').strip()}")
        socket = Path(f"/tmp/.X11-unix/X{number}")
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"Xvfb :{number} did not create {socket}")
            time.sleep(0.05)
        log.info("Xvfb :%s running (pid %d)", number, process.pid)
        yield f":{number}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        errors.close()
