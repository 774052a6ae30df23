"""Each integration module imports without its library; using it then raises an ImportError saying what to install.
A missing library is simulated in a fresh interpreter with sys.modules[name] = None, which makes `import name` fail
as it does when the package is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BINDING = Path(__file__).resolve().parents[1]


def run_without(modules, code: str) -> str:
    prelude = f"import sys\nsys.path.insert(0, {str(BINDING)!r})\n"
    prelude += "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_celery_integration_without_celery():
    out = run_without(["celery"], """
        import progress_engine.integrations.celery as module
        try:
            from progress_engine.integrations.celery import ProgressTask
        except ImportError as e:
            print("ImportError:", e)
        try:
            module.nothing
        except AttributeError:
            print("AttributeError")
    """)
    assert "ImportError: progress_engine.integrations.celery needs Celery: pip install celery" in out, out
    assert "AttributeError" in out


def test_diffusers_integration_without_numpy_or_torch():
    out = run_without(["numpy", "torch", "diffusers"], """
        from progress_engine import ProgressTracker
        from progress_engine.integrations.diffusers import ProgressCallback, latents_to_rgb
        with ProgressTracker() as tracker:
            tracker.create_task_progress_sync("t", "tpl")
            for kwargs in ({}, {"preview": "vae"}):
                try:
                    ProgressCallback("t", tracker, **kwargs)
                except ImportError as e:
                    print("ImportError:", e)
            # Reporting steps alone needs nothing.
            class Pipe:
                num_timesteps = 4
            callback = ProgressCallback("t", tracker, preview=None)
            for i in range(4):
                callback(Pipe(), i, 999 - i, {"latents": None})
            print(tracker.get_task_progress_sync("t")["stages"]["1"]["progress"])
    """)
    missing = "ImportError: progress_engine.integrations.diffusers needs numpy for previews: pip install numpy"
    assert out.count(missing) == 2, out
    assert out.splitlines()[-1] == "1.0", out


def test_vae_preview_without_torch():
    out = run_without(["torch"], """
        from progress_engine import ProgressTracker
        from progress_engine.integrations.diffusers import ProgressCallback
        with ProgressTracker() as tracker:
            try:
                ProgressCallback("t", tracker, preview="vae")
            except ImportError as e:
                print("ImportError:", e)
    """)
    assert "ImportError: preview='vae' needs torch and diffusers: pip install torch diffusers" in out, out
