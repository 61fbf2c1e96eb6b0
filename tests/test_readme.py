"""README.md as a newcomer reads it: its two commands are what CI runs, and its API block works
when run as a script exactly as written."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def block(marker: str) -> str:
    """The code block between <!-- marker --> and <!-- /marker --> (without the fences)."""
    start = README.index(f"<!-- {marker} -->\n")
    end = README.index(f"<!-- /{marker} -->", start)
    lines = README[start:end].splitlines()[1:]
    assert lines[0] == "```" and lines[-1] == "```", f"{marker}: expected one fenced block"
    return "\n".join(lines[1:-1]) + "\n"


def test_the_install_line_installs_what_the_test_line_needs():
    install, test = block("install-command").strip(), block("test-command").strip()
    assert "\n" not in install and "\n" not in test
    assert test == "python -m pytest -q"
    assert 'pip install -e ".[test]"' in install and install.index("pip install") < install.index("p2sam demo")
    test_extra = next(line for line in (REPO / "pyproject.toml").read_text().splitlines() if line.startswith("test = ["))
    assert '"pytest>=' in test_extra


def test_the_cpu_only_hint_comes_before_the_install_command():
    hint = README.index("download.pytorch.org/whl/cpu")
    assert hint < README.index("<!-- install-command -->")


def test_ci_runs_exactly_the_readme_commands():
    """.ci/run extracts both commands from the README (so they cannot drift) and installs nothing else with pip."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_block install-command" in ci and "readme_block test-command" in ci
    assert "pip install" not in ci and "pip_install" not in ci, "CI installs Python packages only through the README line"
    extracted = subprocess.run(
        ["bash", "-c", 'source <(sed -n "/^readme_block()/,/^}/p" .ci/run); readme_block install-command; readme_block test-command'],
        capture_output=True, text=True, cwd=REPO, check=True).stdout.splitlines()
    assert extracted == [block("install-command").strip(), block("test-command").strip()]


def test_ci_lints_with_ruff_and_the_tree_is_clean():
    """.ci/run runs `ruff check .` (ruff comes with the `test` extra); the tree passes the rules in pyproject.toml."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "ruff check ." in ci and ci.index("ruff check .") < ci.index('bash -c ". .venv/bin/activate && $test_cmd"')
    pyproject = (REPO / "pyproject.toml").read_text()
    test_extra = next(line for line in pyproject.splitlines() if line.startswith("test = ["))
    assert '"ruff>=' in test_extra and "[tool.ruff.lint]" in pyproject
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    run = subprocess.run([ruff, "check", "--no-cache", "."], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _own_network() -> list[str] | None:
    """A private network namespace (its own loopback, so port 8000 is ours), where the kernel allows it."""
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up 2>/dev/null || true; echo ok"],
                           capture_output=True, text=True)
    return ["unshare", "-rn"] if probe.stdout.strip() == "ok" else None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_readme_api_block_downloads_an_rtstruct(tmp_path):
    for tool in ("curl", "zip", "jq"):
        if not shutil.which(tool):
            pytest.skip(f"the README's API block needs {tool}, which this machine lacks")
    script = tmp_path / "api_block.sh"
    script.write_text(block("api-block"))
    bindir = str(Path(sys.executable).parent)  # where `p2sam` is installed next to this Python
    if not (Path(bindir) / "p2sam").exists():
        pytest.skip("the p2sam command is not installed next to this Python (pip install -e .)")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "P2SAM_DATA_DIR": str(tmp_path / "data"),
           "P2SAM_N_SAMPLES": "2", "PYTHONPATH": str(REPO)}
    env.pop("P2SAM_BROKER_URL", None)
    netns = _own_network()
    if netns is None and not _port_free(8000):
        pytest.skip("port 8000 is taken and no private network namespace can be made here")
    # The block is sourced by a bash with -e and pipefail, so any failing line fails the test (pasted
    # into a terminal it would print the reason and go on); the server it starts is stopped at the end.
    runner = ("ip link set lo up 2>/dev/null; " if netns else "") + \
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT; set -e -o pipefail; . ./api_block.sh"
    proc = subprocess.Popen([*(netns or []), "bash", "-c", runner], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=400)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the block's `p2sam serve &` (its own process group)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-4000:]
    assert '"state":"succeeded"' in output, output[-4000:]
    ds = pydicom.dcmread(tmp_path / "followup1_rtstruct.dcm")
    assert ds.Modality == "RTSTRUCT" and ds.StructureSetROISequence[0].ROIName == "GTV"
    assert len(ds.ROIContourSequence[0].ContourSequence) > 0
