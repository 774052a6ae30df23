"""Synthetic but realistic traces of AI-generation tasks, for the ETA accuracy benchmark.

Each trace family simulates a small fleet: tasks arrive at a rate that swings with the time of "day"
and with bursts, are routed to a pool of GPUs of one kind, wait first-come-first-served for a free
worker, and run there. What a task's runner reports (with explicit timestamps) is the trace:

  create            queue stage (status "queued") at arrival
  <loading stage>   when a worker picks it up; a cold load when the worker holds another model or has
                    been idle past the eviction time, else a warm one
  execution_progress {step, total_steps} per step of the main stage (per report_every steps), with a
                    warm-up on the first step, per-step jitter, occasional stalls, and (for some
                    families) a slow decode after the last step
  <later stages>    post-processing / encoding, reported only as stage changes
  execution_complete

A few outliers per family: a run that slows down part-way (a noisy neighbour, thermal throttling) or
one that stalls for a long time.

The hidden parameters (load, worker state, speed factors, outliers) stay in this module; the
benchmark hands the engine only the events and what the runner knows at creation (template,
category, quality, the GPU in resource_config).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple


@dataclass
class Trace:
    """One task as its runner reports it."""

    task_id: str
    template_id: str
    category: str
    quality: str
    resource_config: Dict[str, str]
    created: float
    #: (timestamp, event name, data) in time order; the last one is execution_complete.
    events: List[Tuple[float, str, dict]]
    #: Seconds per stage index, as the engine will measure them.
    stage_durations: Dict[int, float]
    #: The job's size as the runner knows it at creation (requested steps, megapixels, frames, seconds of audio,
    #: tiles): what it may pass in metadata["workload"]. Nothing hidden (worker state, speeds, outliers) is in it.
    workload: Dict[str, float] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.events[-1][0]

    @property
    def total(self) -> float:
        return self.end - self.created


@dataclass
class Pool:
    gpu: str
    workers: int
    #: Step-time multiplier (1.0 = the family's fastest GPU).
    speed: float
    #: Cold model-load time multiplier (disk, PCIe, host memory).
    load_speed: float
    #: Share of the family's tasks routed here.
    share: float


@dataclass
class Quality:
    name: str
    share: float
    #: The model a worker must hold; switching models means a cold load.
    model: str
    #: Draws (steps, work units per step, tail-stage work, the workload the runner knows) for one task.
    draw: Callable[[random.Random], Tuple[int, float, float, Dict[str, float]]]


@dataclass
class Family:
    name: str
    template_id: str
    category: str
    #: Stage names in order; stage 0 is the queue, stage 1 loading, `main` the stepped stage.
    stages: List[str]
    #: For a template the runner registers itself: [{"name", "weight"}]; None = category defaults.
    registered: Optional[List[dict]]
    main: int
    pools: List[Pool]
    qualities: List[Quality]
    #: Seconds per work unit on speed 1.0.
    step_seconds: float
    #: Extra seconds of the first step (compilation, cudnn autotuning), range.
    warmup: Tuple[float, float]
    #: Per-step log-normal jitter.
    jitter: float
    #: Stall probability per step and its duration range.
    stall_p: float
    stall: Tuple[float, float]
    #: Decode after the last step inside the main stage (seconds per work unit × work), 0 = none.
    decode: float
    #: How much slower the step gets from the first to the last (attention over a growing context).
    drift: float
    #: Cold / warm model load seconds (median) and idle seconds after which a worker evicts its model.
    cold_load: float
    warm_load: float
    evict_after: float
    #: Seconds of the stages after the main one per unit of tail work (list per stage), log-normal σ.
    tail_seconds: List[float]
    tail_sigma: float
    #: Mean utilisation of the pools, its daily swing, the day length, and the burst rate.
    utilisation: float
    swing: float
    day: float
    bursts: float
    #: Progress is reported every this many steps (and at the last).
    report_every: int = 1
    #: The runner enters the main stage by name (True), or jumps to it with its first step.
    explicit_main: bool = True
    outliers: float = 0.03


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def _image_draw(steps_choices, res_choices):
    def draw(rng: random.Random) -> Tuple[int, float, float]:
        steps = rng.choice(steps_choices)
        megapixels = rng.choice(res_choices)
        work = megapixels ** 1.15  # attention cost grows faster than the pixel count
        return steps, work, megapixels, {"steps": steps, "megapixels": megapixels}
    return draw


def _video_draw(steps: int, frames_choices, pixels: float):
    def draw(rng: random.Random) -> Tuple[int, float, float]:
        frames = rng.choice(frames_choices)
        # pixels is relative to 480p (832 x 480, 0.4 MP); the runner knows the resolution it renders.
        workload = {"steps": steps, "frames": frames, "megapixels": round(pixels * 0.4, 3)}
        return steps, frames / 49 * pixels, frames / 49 * pixels, workload
    return draw


def _audio_draw(tokens_per_second: int, seconds: Tuple[int, int]):
    def draw(rng: random.Random) -> Tuple[int, float, float]:
        duration = rng.randint(*seconds)
        return duration * tokens_per_second, 1.0, duration / 10, {"seconds": duration}
    return draw


def _upscale_draw(tta: float):
    def draw(rng: random.Random) -> Tuple[int, float, float]:
        megapixels = math.exp(rng.uniform(math.log(0.25), math.log(12.0)))
        tiles = max(1, math.ceil(megapixels / 0.26))
        return tiles, tta, megapixels * 16 / 10, {"tiles": tiles, "megapixels": round(megapixels, 3)}
    return draw


FAMILIES: List[Family] = [
    Family(
        name="image", template_id="sdxl", category="image_generation",
        stages=["queue", "model_loading", "generation", "post_processing"], registered=None, main=2,
        pools=[Pool("A100", 3, 1.0, 1.0, 0.45), Pool("L4", 3, 2.3, 1.4, 0.35), Pool("T4", 2, 4.5, 2.0, 0.20)],
        qualities=[
            Quality("draft", 0.3, "sdxl-base", _image_draw([20, 25], [0.59, 0.79])),
            Quality("standard", 0.5, "sdxl-base", _image_draw([30], [1.0, 1.0, 1.18])),
            Quality("high", 0.2, "sdxl-refiner", _image_draw([40, 50], [1.0, 1.56, 2.36])),
        ],
        step_seconds=0.14, warmup=(0.4, 1.8), jitter=0.05, stall_p=0.004, stall=(1.0, 6.0),
        decode=0.45, drift=0.0, cold_load=9.0, warm_load=0.6, evict_after=240.0,
        tail_seconds=[0.5], tail_sigma=0.35, utilisation=0.6, swing=0.45, day=2400.0, bursts=0.0005,
    ),
    Family(
        name="video", template_id="video-gen-v1", category="video_generation",
        stages=["queue", "model_loading", "frame_generation", "video_encoding"], registered=None, main=2,
        pools=[Pool("H100", 2, 1.0, 1.0, 0.4), Pool("A100", 3, 1.6, 1.3, 0.6)],
        qualities=[
            Quality("480p", 0.5, "wan-480p", _video_draw(30, [49, 81], 1.0)),
            Quality("720p", 0.5, "wan-720p", _video_draw(40, [49, 81, 121], 2.25)),
        ],
        step_seconds=1.1, warmup=(3.0, 9.0), jitter=0.04, stall_p=0.008, stall=(4.0, 25.0),
        decode=6.0, drift=0.0, cold_load=55.0, warm_load=2.5, evict_after=600.0,
        tail_seconds=[1.6], tail_sigma=0.25, utilisation=0.6, swing=0.45, day=30000.0, bursts=0.0002,
    ),
    Family(
        name="audio", template_id="musicgen", category="audio_generation",
        stages=["queue", "model_loading", "generation", "post_processing"], registered=None, main=2,
        pools=[Pool("L4", 4, 1.0, 1.0, 0.6), Pool("A10G", 3, 1.25, 1.2, 0.4)],
        qualities=[
            Quality("small", 0.6, "musicgen-small", _audio_draw(50, (5, 30))),
            Quality("large", 0.4, "musicgen-large", _audio_draw(50, (5, 30))),
        ],
        step_seconds=0.014, warmup=(0.5, 1.5), jitter=0.08, stall_p=0.0008, stall=(0.5, 3.0),
        decode=0.0, drift=0.35, cold_load=7.0, warm_load=0.4, evict_after=300.0,
        tail_seconds=[0.35], tail_sigma=0.3, utilisation=0.6, swing=0.45, day=3000.0, bursts=0.0005,
        report_every=10, explicit_main=False,
    ),
    Family(
        name="upscale", template_id="upscale-x4", category="image_processing",
        stages=["queue", "download", "upscale", "encode"],
        registered=[{"name": "queue", "weight": 0.05}, {"name": "download", "weight": 0.15},
                    {"name": "upscale", "weight": 0.7}, {"name": "encode", "weight": 0.1}],
        main=2,
        pools=[Pool("T4", 4, 1.0, 1.0, 0.6), Pool("A10G", 2, 0.6, 0.8, 0.4)],
        qualities=[
            Quality("standard", 0.7, "realesrgan", _upscale_draw(1.0)),
            Quality("max", 0.3, "realesrgan", _upscale_draw(2.0)),
        ],
        step_seconds=0.42, warmup=(0.8, 2.0), jitter=0.06, stall_p=0.003, stall=(1.0, 5.0),
        decode=0.0, drift=0.0, cold_load=1.5, warm_load=1.5, evict_after=1e9,
        tail_seconds=[0.35], tail_sigma=0.3, utilisation=0.65, swing=0.4, day=1200.0, bursts=0.001,
    ),
]


@dataclass
class _Worker:
    free_at: float = 0.0
    model: Optional[str] = None
    last_used: float = -1e18


@dataclass
class _Job:
    arrival: float
    pool: Pool
    quality: Quality
    traits: Tuple[int, float, float, Dict[str, float]] = field(default=(0, 0.0, 0.0, {}))


def _arrivals(family: Family, pool: Pool, count: int, rng: random.Random, mean_service: float) -> List[float]:
    """Arrival times of a non-homogeneous Poisson process (thinning): utilisation swings over the day,
    plus bursts that briefly double it."""
    base = family.utilisation * pool.workers / mean_service
    peak = base * (1 + family.swing) * 2
    phase = rng.uniform(0, 2 * math.pi)
    times: List[float] = []
    t = 0.0
    burst_until = -1.0
    while len(times) < count:
        t += rng.expovariate(peak)
        if rng.random() < family.bursts:
            burst_until = t + rng.uniform(20, 90)
        rate = base * (1 + family.swing * math.sin(2 * math.pi * t / family.day + phase))
        if t < burst_until:
            rate *= 2
        if rng.random() < rate / peak:
            times.append(t)
    return times


def _mean_service(family: Family, pool: Pool, rng: random.Random) -> float:
    """Rough mean service time of a pool, to size arrival rates (a quick Monte Carlo)."""
    models: Dict[str, float] = {}
    for q in family.qualities:
        models[q.model] = models.get(q.model, 0.0) + q.share
    switch = 1 - sum(share * share for share in models.values())  # chance the next job needs another model
    total = 0.0
    for _ in range(200):
        quality = rng.choices(family.qualities, [q.share for q in family.qualities])[0]
        steps, work, tail, _ = quality.draw(rng)
        total += (steps * work * family.step_seconds * pool.speed * (1 + family.drift / 2)
                  + family.stall_p * steps * sum(family.stall) / 2
                  + family.decode * work * pool.speed + sum(family.tail_seconds) * tail * math.sqrt(pool.speed)
                  + switch * family.cold_load * pool.load_speed + (1 - switch) * family.warm_load
                  + sum(family.warmup) / 2 * math.sqrt(pool.speed))
    return total / 200


def generate(family: Family, count: int, seed: int, epoch: float = 1_750_000_000.0) -> List[Trace]:
    """`count` traces of a family in arrival order, deterministically from `seed`."""
    rng = random.Random(f"{seed}:{family.name}")
    jobs: List[_Job] = []
    for pool in family.pools:
        n = max(1, round(count * pool.share))
        for t in _arrivals(family, pool, n, rng, _mean_service(family, pool, rng)):
            quality = rng.choices(family.qualities, [q.share for q in family.qualities])[0]
            jobs.append(_Job(t, pool, quality))
    jobs.sort(key=lambda j: j.arrival)
    jobs = jobs[:count]
    workers = {pool.gpu: [_Worker() for _ in range(pool.workers)] for pool in family.pools}
    traces = []
    for index, job in enumerate(jobs):
        job.traits = job.quality.draw(rng)
        worker = min(workers[job.pool.gpu], key=lambda w: w.free_at)
        start = max(job.arrival, worker.free_at)
        cold = worker.model != job.quality.model or start - worker.last_used > family.evict_after
        trace = _run(family, job, index, start, cold, rng, epoch)
        worker.free_at = trace.end - epoch
        worker.model = job.quality.model
        worker.last_used = worker.free_at
        traces.append(trace)
    return traces


def _run(family: Family, job: _Job, index: int, start: float, cold: bool, rng: random.Random,
         epoch: float) -> Trace:
    pool, quality = job.pool, job.quality
    steps, work, tail_work, workload = job.traits
    created = epoch + job.arrival
    t = epoch + start
    events: List[Tuple[float, str, dict]] = []
    durations: Dict[int, float] = {0: t - created}
    # Loading: cold loads read the weights from disk; warm ones only move them to the GPU.
    load = (_lognormal(rng, family.cold_load * pool.load_speed, 0.2) if cold
            else _lognormal(rng, family.warm_load, 0.3))
    # A runner that loads a model knows whether it had to read it from disk or found it resident (its own
    # cache); it says so as the loading stage's "variant" unless --no-variant. A download stage says nothing.
    hint = {"variant": "cold" if cold else "cached"} if family.stages[1] == "model_loading" else {}
    events.append((t, family.stages[1], hint))
    t += load
    durations[1] = load
    # The main stage: a whole-run speed factor, warm-up, jitter, stalls, an optional slowdown.
    speed = pool.speed * _lognormal(rng, 1.0, 0.04)
    slow_from, slow_factor = steps + 1, 1.0
    long_stall_at, long_stall = -1, 0.0
    u = rng.random()
    if u < family.outliers / 2:
        slow_from, slow_factor = rng.randint(1, steps), rng.uniform(1.8, 3.5)
    elif u < family.outliers:
        long_stall_at, long_stall = rng.randint(1, steps), rng.uniform(20, 90) * max(1.0, pool.speed / 2)
    main_start = t
    if family.explicit_main:
        events.append((t, family.stages[family.main], {}))
    warm = rng.uniform(*family.warmup) * math.sqrt(pool.speed) * (1.5 if cold else 1.0)
    for step in range(1, steps + 1):
        dt = family.step_seconds * work * speed * (1 + family.drift * step / steps)
        dt *= math.exp(rng.gauss(0.0, family.jitter))
        if step == 1:
            dt += warm
        if step >= slow_from:
            dt *= slow_factor
        if rng.random() < family.stall_p:
            dt += rng.uniform(*family.stall)
        if step == long_stall_at:
            dt += long_stall
        t += dt
        if step % family.report_every == 0 or step == steps:
            events.append((t, "execution_progress", {"step": step, "total_steps": steps}))
    if family.decode:
        t += _lognormal(rng, family.decode * work * speed, 0.08)
    durations[family.main] = t - main_start
    # The stages after the main one.
    for offset, seconds in enumerate(family.tail_seconds, start=family.main + 1):
        events.append((t, family.stages[offset], {}))
        spent = _lognormal(rng, seconds * tail_work * math.sqrt(pool.speed), family.tail_sigma)
        t += spent
        durations[offset] = spent
    events.append((t, "execution_complete", {}))
    # The loading stage is entered by name; stage indices between loading and main have 0 s.
    for i in range(len(family.stages)):
        durations.setdefault(i, 0.0)
    return Trace(
        task_id=f"{family.name}-{index:05d}", template_id=family.template_id, category=family.category,
        quality=quality.name, resource_config={"gpu": pool.gpu}, created=created, events=events,
        stage_durations=durations, workload=workload,
    )
