"""tools/soak.py on a short run: it drives the live loop and reports every figure and check (the long run is a tool's
job, not a test's; its output-gap check depends on the machine's load, so only the other checks are asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT, media

pytestmark = pytest.mark.slow


def test_a_short_soak_reports_memory_descriptors_threads_gaps_and_the_recording(assets, tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, str(PROJECT / "tools" / "soak.py"), "--frames", "150", "--warmup", "30",
                             "--identity", str(media("pyfeat_single_face.jpg")), "--json", str(report_path)],
                            capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert result.returncode in (0, 1), result.stderr
    for line in ("ok    memory growth under 50 MB", "ok    no file-descriptor growth", "ok    no thread growth",
                 "ok    every frame reached the virtual camera", "ok    every frame recorded"):
        assert line in result.stdout, result.stdout
    assert "no output stall over 100 ms" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["frames"] == 150 and report["recorded_frames"] == 150
    assert report["samples"] and report["rss_mb"]["after_warmup"] > 100, "the process's real resident memory"
