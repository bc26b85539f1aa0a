"""Smoke test of tools/bench.py: it runs end to end and reports every stage. No assertion on speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
MEDIA = PROJECT.parent / "shared" / "assets" / "media"
STAGES = ("decode", "track", "retarget", "geometry", "render", "encode")


@pytest.mark.slow
def test_bench_runs_and_reports_every_stage(tmp_path: Path) -> None:
    if not (MEDIA / "pyfeat_single_face.mp4").is_file() or not (MEDIA / "skimage_astronaut.png").is_file():
        pytest.skip(f"sample media not found in {MEDIA}")
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "bench.py"), "--frames", "30", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["stages"]) == set(STAGES)
    for stage in STAGES:
        assert report["stages"][stage]["samples"] == 20  # 30 frames less the 10 warm-up frames
        assert report["stages"][stage]["median_ms"] >= 0
    assert report["clip"]["frames"] == 30 and report["clip"]["size"] == [640, 480]
    assert len(report["whole"]["runs"]) == 1 and report["whole"]["runs"][0]["frames"] == 30
    assert "sum of medians" in result.stdout
