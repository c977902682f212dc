"""scripts/system-deps: the one place that knows the Debian packages the tests need. The
README's `make test` runs it, and .ci/run runs `make test`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "system-deps"


def test_missing_packages_stop_a_non_root_run_at_once_with_the_command_to_run():
    # A directory others can enter: the clone may sit in a private one, and we run as nobody.
    scratch = Path(tempfile.mkdtemp(prefix="procfleet-deps-"))
    try:
        scratch.chmod(0o755)
        bin_dir = scratch / "bin"
        bin_dir.mkdir(mode=0o755)
        for program in ("id", "busybox", "openssl"):  # chromium & co. are "missing"
            if found := shutil.which(program):
                (bin_dir / program).symlink_to(found)
        script = scratch / "system-deps"
        shutil.copy(SCRIPT, script)
        script.chmod(0o755)
        as_other = {"user": "nobody", "group": "nogroup", "extra_groups": []} \
            if os.geteuid() == 0 else {}
        result = subprocess.run(["/bin/sh", str(script)], env={"PATH": str(bin_dir)},
                                capture_output=True, text=True, timeout=30, **as_other)
    finally:
        shutil.rmtree(scratch)
    assert result.returncode == 1
    assert ("sudo apt-get update && sudo apt-get install -y --no-install-recommends "
            "prometheus-process-exporter chromium chromium-driver") in result.stderr


def test_the_readme_test_command_and_ci_install_through_the_script():
    dry_run = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert dry_run.index("scripts/system-deps") < next(
        i for i, line in enumerate(dry_run) if "pytest" in line)
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci and "apt-get" not in ci
    assert ci.rstrip().endswith("make lint")
