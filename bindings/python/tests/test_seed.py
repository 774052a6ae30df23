"""The seed's Python snippets (seed/progress-tracking-system.md), run as written: only the import
lines differ. Lines marked "# test:" are additions that observe the state; the snippets' own lines
are unchanged."""

from __future__ import annotations

import asyncio
import re

import pytest

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

# Every TaskProgress key the engine emits, present even when null.
TASK_KEYS = {
    "task_id", "template_id", "template_category", "quality", "batch_id", "status", "current_stage",
    "total_stages", "overall_progress", "eta", "eta_seconds", "eta_confidence", "preview_url", "stages",
    "resource_usage", "seq", "created_at", "updated_at", "started_at", "completed_at", "error",
    "metadata", "resource_config",
}
STAGE_KEYS = {
    "name", "description", "weight", "status", "progress", "duration", "message", "started_at", "completed_at"
}


def check_task_shape(task: dict) -> None:
    """The seed's TaskProgress fields, names and types."""
    assert TASK_KEYS <= task.keys()
    assert isinstance(task["task_id"], str) and isinstance(task["template_id"], str)
    assert task["status"] in ("queued", "executing", "completed", "failed", "cancelled")
    assert isinstance(task["current_stage"], int) and isinstance(task["total_stages"], int)
    assert isinstance(task["overall_progress"], (int, float)) and 0 <= task["overall_progress"] <= 100
    assert task["eta"] is None or ISO_Z.match(task["eta"])
    assert task["preview_url"] is None or isinstance(task["preview_url"], str)
    assert isinstance(task["seq"], int)
    for key in ("created_at", "updated_at"):
        assert ISO_Z.match(task[key]), key
    for key in ("started_at", "completed_at"):
        assert task[key] is None or ISO_Z.match(task[key]), key
    assert list(task["stages"]) == [str(i) for i in range(task["total_stages"])]
    for stage in task["stages"].values():
        assert STAGE_KEYS <= stage.keys()
        assert isinstance(stage["name"], str)
        assert stage["status"] in ("pending", "in_progress", "completed", "failed", "skipped")
        assert isinstance(stage["progress"], (int, float)) and 0 <= stage["progress"] <= 1
        assert stage["duration"] is None or (isinstance(stage["duration"], (int, float)) and stage["duration"] >= 0)
    assert set(task["resource_usage"]) == {"cpu_percent", "memory_mb", "gpu_percent", "gpu_memory_mb"}


def test_basic_progress_tracking(no_engine_env):
    from progress_engine import ProgressTracker, ProgressContext  # was: from app.progress import ...
    from progress_engine import get_progress_tracker  # was: from app.core.dependencies import ...

    seen = {}

    async def snippet():
        # Get tracker instance
        tracker = await get_progress_tracker()

        # Use context manager for automatic tracking
        async with ProgressContext(
            tracker,
            task_id="task-123",
            template_id="stable-diffusion-xl",
            template_category="image_generation"
        ) as ctx:

            # Get callback for function runner
            callback = ctx.get_callback()

            # Update progress
            await callback('execution_progress', {
                'step': 15,
                'total_steps': 30,
                'preview_path': '/tmp/preview.png'
            })
            seen["during"] = await tracker.get_task_progress("task-123")  # test:
        seen["after"] = await tracker.get_task_progress("task-123")  # test:
        assert isinstance(tracker, ProgressTracker)  # test:

    asyncio.run(snippet())

    during = seen["during"]
    check_task_shape(during)
    assert during["task_id"] == "task-123" and during["template_id"] == "stable-diffusion-xl"
    assert during["template_category"] == "image_generation"
    assert during["status"] == "executing"
    assert during["current_stage"] == 2 and during["total_stages"] == 4
    # Steps jump straight to the main stage (generation); queue and model_loading complete on the way.
    assert during["overall_progress"] == pytest.approx(100 * (0.05 + 0.15 + 0.70 * 15 / 30), abs=1e-9)  # 55.0
    stages = during["stages"]
    assert [s["name"] for s in stages.values()] == ["queue", "model_loading", "generation", "post_processing"]
    assert [s["weight"] for s in stages.values()] == pytest.approx([0.05, 0.15, 0.70, 0.10])
    assert [s["status"] for s in stages.values()] == ["completed", "completed", "in_progress", "pending"]
    assert stages["2"]["progress"] == pytest.approx(0.5)
    assert isinstance(stages["0"]["duration"], (int, float)) and stages["2"]["duration"] is None

    after = seen["after"]
    check_task_shape(after)
    assert after["status"] == "completed" and after["overall_progress"] == 100
    assert all(s["status"] == "completed" for s in after["stages"].values())


def test_manual_progress_updates(tracker):
    from progress_engine import StageStatus  # the snippet uses StageStatus and a tracker

    seen = {}

    async def snippet():
        # Create task progress
        progress = await tracker.create_task_progress(
            task_id="task-456",
            template_id="video-gen-v1",
            template_category="video_generation"
        )
        seen["created"] = progress  # test:

        # Update stage
        await tracker.update_stage(
            task_id="task-456",
            stage=2,  # Frame generation stage
            status=StageStatus.IN_PROGRESS,
            progress=0.5,
            message="Generating frame 15/30"
        )
        seen["updated"] = await tracker.get_task_progress("task-456")  # test:

    asyncio.run(snippet())

    created = seen["created"]
    check_task_shape(created)
    assert created["status"] == "queued" and created["current_stage"] == 0 and created["overall_progress"] == 0
    assert [s["name"] for s in created["stages"].values()] == [
        "queue", "model_loading", "frame_generation", "video_encoding"
    ]
    assert [s["weight"] for s in created["stages"].values()] == pytest.approx([0.02, 0.08, 0.80, 0.10])

    updated = seen["updated"]
    check_task_shape(updated)
    assert updated["status"] == "executing" and updated["current_stage"] == 2
    assert updated["overall_progress"] == pytest.approx(100 * (0.02 + 0.08 + 0.80 * 0.5), abs=1e-9)  # 50.0
    frames = updated["stages"]["2"]
    assert frames["status"] == "in_progress" and frames["progress"] == 0.5
    assert frames["message"] == "Generating frame 15/30"
    assert [updated["stages"][i]["status"] for i in "01"] == ["completed", "completed"]


def test_custom_stages(tracker):
    from progress_engine import StageManager, Stage  # was: from app.progress import StageManager, Stage

    custom_stages = [
        Stage('preprocessing', 'Preparing data', weight=0.2),
        Stage('analysis', 'Analyzing content', weight=0.3),
        Stage('synthesis', 'Synthesizing output', weight=0.4),
        Stage('validation', 'Validating results', weight=0.1)
    ]

    StageManager.register_template_stages('my-custom-template', custom_stages)

    # test: the tracker opened before the registration uses the stages...
    task = tracker.create_task_progress_sync("custom-1", "my-custom-template")
    check_task_shape(task)
    assert [(s["name"], s["description"]) for s in task["stages"].values()] == [
        ("preprocessing", "Preparing data"),
        ("analysis", "Analyzing content"),
        ("synthesis", "Synthesizing output"),
        ("validation", "Validating results"),
    ]
    assert [s["weight"] for s in task["stages"].values()] == pytest.approx([0.2, 0.3, 0.4, 0.1])
    # ...with the spec's overall_progress: synthesis (the main stage) half done after the first two.
    tracker.update_progress_sync("custom-1", 5, 10, message="half")
    assert tracker.get_task_progress_sync("custom-1")["overall_progress"] == pytest.approx(70.0, abs=1e-9)


def test_eta_record_completion(tracker):
    eta_predictor = tracker.eta_predictor  # the snippet's free name

    async def snippet():
        # Record completion for future predictions
        await eta_predictor.record_completion(
            task_id="task-123",
            template_id="stable-diffusion-xl",
            quality="high",
            stage_durations={0: 5.0, 1: 15.0, 2: 120.0, 3: 10.0},
            total_duration=150.0,
            resource_config={"gpu": "A100"}
        )

    asyncio.run(snippet())

    stored = eta_predictor.records("stable-diffusion-xl", "high")
    assert stored["template_id"] == "stable-diffusion-xl" and stored["quality"] == "high"
    (record,) = stored["records"]
    assert record["task_id"] == "task-123"
    assert record["stage_durations"] == {"0": 5.0, "1": 15.0, "2": 120.0, "3": 10.0}
    assert record["total_duration"] == 150.0
    assert record["resource_config"] == {"gpu": "A100"}
    assert eta_predictor.records("stable-diffusion-xl", "low")["records"] == []
