"""`run.py --doctor` on this machine: what is there, and the fix for what is not."""

import glob
import os
import subprocess
import sys

from tests.conftest import HANG_S, PROJECT


def doctor(*args: str, **env: str) -> dict[str, str]:
    result = subprocess.run([sys.executable, str(PROJECT / "run.py"), "--doctor", *args], cwd=PROJECT,
                            capture_output=True, text=True, timeout=HANG_S, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    lines = {}
    for line in result.stdout.splitlines():
        status, rest = line[:3].strip(), line[5:]
        name, detail = rest[:16].strip(), rest[17:]
        lines[name] = f"{status} {detail}"
    return lines


def test_doctor_reports_every_check_with_its_fix(assets, tmp_path) -> None:
    report = doctor()
    assert set(report) == {"assets", "OpenGL", "H.264", "cameras", "virtual camera", "DECA files", "DECA engines"}
    assert report["H.264"].startswith("ok ") and "libx264 in PyAV" in report["H.264"]
    assert report["assets"].startswith("ok ")
    assert report["OpenGL"].startswith("ok ") and "headless EGL" in report["OpenGL"]
    if not glob.glob("/dev/video*"):  # this kind of machine: no webcam, no v4l2loopback
        assert report["cameras"].startswith("FIX") and "--source CLIP.mp4" in report["cameras"]
        assert report["virtual camera"].startswith("FIX") and "modprobe v4l2loopback" in report["virtual camera"]
    missing = doctor(RETARGET_ASSETS=str(tmp_path / "none"))
    assert missing["assets"].startswith("FIX") and "realtime-retarget --fetch-assets" in missing["assets"]
    partial = tmp_path / "partial"  # every asset but the person segmenter, which the default look needs
    partial.mkdir()
    for path in assets.iterdir():
        if path.name != "selfie_segmentation.tflite":
            (partial / path.name).symlink_to(path)
    without_segmenter = doctor(RETARGET_ASSETS=str(partial))["assets"]
    assert without_segmenter.startswith("FIX") and "segmentation" in without_segmenter
    deca = doctor("--deca-data", str(tmp_path))
    assert deca["DECA files"].startswith("FIX") and "generic_model.pkl" in deca["DECA files"]
