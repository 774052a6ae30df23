"""The examples of bindings/python/README.md "Integrations", run as a user would: each Python block whose first line
names a file is written to that file and run. The Celery example runs with a real prefork worker, its own
redis-server and a progress-server; the diffusers section's own-sampler example with numpy."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "bindings" / "python" / "README.md"
BINDINGS = ROOT / "bindings" / "python"


def readme_file(name: str) -> str:
    """The README's ```python block that starts with `# name`."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if block.startswith(f"# {name}\n"):
            return block
    raise AssertionError(f"no python block starting with '# {name}' in {README}")


def run_python(path: Path, env: dict, timeout: float = 90) -> str:
    out = subprocess.run([sys.executable, path.name], cwd=path.parent, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, **env))
    assert out.returncode == 0, f"{path.name} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_latent_preview_example(tmp_path):
    pytest.importorskip("numpy")
    from PIL import Image
    script = tmp_path / "latent_preview.py"
    script.write_text(readme_file("latent_preview.py"))
    out = run_python(script, {"PYTHONPATH": str(BINDINGS)})
    names = ast.literal_eval(out.strip().splitlines()[-1])  # the printed list of file names
    assert [n.rsplit("_", 1)[1] for n in names] == ["25.png", "50.png", "75.png"], out
    for name in names:
        with Image.open(tmp_path / "previews" / name) as image:
            assert image.size == (64, 64) and image.mode == "RGB"


def test_celery_example(tmp_path):
    # Imported here: it skips (celery, redis-server or progress-server missing) only this test.
    from celery_support import RedisServer, Worker, http_get, start_progress_server, wait_until
    for name in ("tasks.py", "run.py"):
        (tmp_path / name).write_text(readme_file(name))
    bash = re.search(r"```bash\npip install celery redis\n(.*?)```", README.read_text(), flags=re.S).group(1)
    assert "celery -A tasks worker --pool=prefork --concurrency=3 &" in bash, bash
    redis = RedisServer(tmp_path, appendfsync="no")
    redis.start()
    server = worker = None
    try:
        server = start_progress_server(tmp_path, redis.url)
        env = {"REDIS_URL": redis.url}
        worker = Worker(tmp_path, "tasks", tmp_path, env, concurrency=3)
        out = run_python(tmp_path / "run.py", dict(env, PYTHONPATH=f"{BINDINGS}{os.pathsep}{tmp_path}"))
        task_id, result = out.split()
        assert result == "20", out
        # Celery stores the result before task_success, where the task completes: the listener may see it after.
        state = wait_until(lambda: (lambda s: s if s.get("status") == "completed" else None)(
            http_get(server.port, f"/api/v1/progress/tasks/{task_id}")[1]), timeout=10, what="the task completed")
        assert state["template_id"] == "thumbnails" and state["stages"]["1"]["message"] == "image 20/20", state
    finally:
        if worker is not None:
            worker.stop()
        if server is not None:
            server.stop()
        redis.stop()
