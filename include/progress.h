/*
 * progress.h — the one public, stable C interface of ProgressEngine (libProgressEngine.so).
 *
 * ProgressEngine tracks AI-generation tasks (stages, weights, overall %, logs, history) in process.
 * Python runners load it through ctypes (bindings/python), C/C++ inference code links it.
 *
 * ABI rules
 * ---------
 * - Handles are opaque. No struct of this header ever changes layout; configuration travels as JSON.
 * - Every function that can fail returns a progress_status: PROGRESS_OK (0) or a negative error code.
 *   Codes are pinned and only ever appended; their numbers never change.
 * - After an error, progress_last_error() returns a message for the calling thread describing the last
 *   failed call on that thread (what happened and what to do). The library owns that string; it stays
 *   valid until the next failing call on the same thread. Successful calls do not clear it.
 * - A rejected update (a bad value, a finished task or stage, bad event data, a counter pair that cannot be
 *   applied, a log entry, preview or step counter refused) changes nothing, is counted ("invalid_updates") and is logged: a warning in the task's log
 *   ("rejected update (PROGRESS_E_…: why)"), at most one a second per task saying how many more were rejected
 *   since; an update of an unknown task, as a JSON line on standard error, at most one a second.
 * - Strings passed in are copied; the caller keeps ownership. Strings handed out through `char **out_json`
 *   belong to the caller and are released with progress_string_free().
 * - A NULL engine, a NULL required string, or a string that is not valid UTF-8 gives
 *   PROGRESS_E_INVALID_ARGUMENT, never a crash. Optional string parameters say "may be NULL".
 * - progress_engine_close(NULL) is a no-op. Using an engine after progress_engine_close() is undefined,
 *   as with free().
 * - Behaviour changes get a new function name; signatures never change.
 *
 * Thread safety
 * -------------
 * - Every function may be called from any thread, concurrently, on the same engine.
 * - No call a runner makes (progress_update, stages, events, logs, previews, counters, reading a cancel request)
 *   waits on the network or the disk: an update holds one lock of the task's shard for a few hundred nanoseconds at
 *   most. Updates to different tasks rarely contend; updates to one task are applied in the order their calls take
 *   that lock.
 * - An engine owns threads, all started by progress_engine_open and joined by progress_engine_close, none of
 *   which ever calls back into user code: a maintenance thread (purges finished tasks after retention_seconds,
 *   reads attached step counters, samples resource usage, warns of unanswered cancel requests); a preview thread
 *   (decodes, downscales, encodes and writes previews; progress_preview_pixels only copies and queues, at most 8
 *   waiting, more are dropped and counted); with `listen`, a listener thread that alone touches libwebsockets and
 *   every socket and client; with `redis_url`, a Redis writer thread with its own connection (each changed task written at most once
 *   per throttle_ms, stage changes and terminal states at once; Redis up, slow or gone never slows an update; it
 *   also reads the cancel requests other engines pass on for this engine's tasks, five times a second);
 *   with both, a subscriber thread that mirrors other engines' tasks for the listener. Each is named for ps,
 *   top -H and gdb: pe-maintenance, pe-preview, pe-listener, pe-redis-writer, pe-redis-sub.
 * - The engine's threads block every asynchronous signal (all but SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP,
 *   SIGSYS, SIGABRT and the profilers' SIGPROF): a signal sent to the process (SIGINT, SIGTERM, SIGCHLD, ...)
 *   is taken by one of the host's threads. No write of the engine raises SIGPIPE in the host, which need not
 *   ignore it for the engine's sake: the engine's threads block it, and a Redis read or a log line written on
 *   the caller's thread holds it back there for the write and takes back one it raised. The thread calling
 *   progress_engine_open keeps its mask, and the process its SIGPIPE disposition (libwebsockets sets SIGPIPE
 *   to ignored when a listener starts; the host's is put back).
 * - Every file descriptor the engine opens (sockets, Redis connections, pipes, files) is close-on-exec: a
 *   program the host starts (system(), posix_spawn) holds none of them, so it cannot keep the listening port
 *   bound after the host exits. (NVML, loaded on a machine with an NVIDIA driver, opens descriptors of its own.)
 * - Reading a task this engine does not hold (progress_task_get, _logs_get, _history_get, _batch_get, REST,
 *   WebSocket subscribe, progress_task_create with "resume"), a batch's members, the older history of a task
 *   held in part and a "*" subscription's list of the fleet's tasks ask Redis synchronously on the calling
 *   thread, with 200 ms connect/read timeouts (a host name is resolved without a timeout: use an address for a
 *   bound); after a failure Redis is not asked again for a second. Updates never do. See docs/REDIS.md.
 * - The caller must not call progress_engine_close() while other threads still use that engine.
 * - How each thread works (locks and their order, queues and wakes, libwebsockets' loop, the descriptors
 *   libuv keeps): docs/THREADING.md.
 * - fork(): an engine open before a fork() works in both processes; the parent's is unaffected. In the child
 *   it starts with none of the parent's tasks (reads of them go to Redis with redis_url), keeps the registered
 *   templates and the ETA history, counts its stats from zero, has no listener (progress_engine_port -1: the
 *   port and its clients stay the parent's) and has threads of its own; with redis_url it writes its tasks
 *   through its own connection under an engine id of its own, so the fleet's listeners show them, while what
 *   the parent had not yet written stays the parent's to write. A child that ends with _exit() without
 *   progress_engine_close may leave its last changes (up to throttle_ms) unwritten. An engine being opened or
 *   closed during the fork is unusable in the child. See docs/THREADING.md.
 *
 * Timestamps
 * ----------
 * Times are taken from the system clock (progress_update's at the kernel tick's resolution; never earlier than
 * the task's previous event) unless the `options_json` of progress_task_create() or the
 * `data_json` of progress_event() carries "timestamp" (epoch seconds, may be fractional). Explicit
 * timestamps let recorded runs be replayed; they must not go backwards for a task
 * (PROGRESS_E_RANGE otherwise). JSON output shows times as ISO-8601 UTC with a "Z" suffix.
 *
 * ETA
 * ---
 * "eta" (ISO-8601 UTC), "eta_seconds" and "eta_confidence" (0..1) of a task are computed when the task is read,
 * so every read reflects the latest change; progress_update only keeps a few numbers on the current stage's pace.
 * - eta_seconds counts from the task's latest event ("updated_at"): eta = updated_at + eta_seconds. The engine's
 *   time is its latest event of any task (explicit timestamps included), never the system clock, so replays
 *   predict as live runs do. Replay recorded runs into an engine of their own: live events would move its time
 *   past theirs.
 * - The estimate comes from the completion records of similar tasks (progress_eta_record_completion, and one per
 *   completed task), the live pace of the current stage and, for a task waiting in a first stage named "queue",
 *   the tasks ahead of it. null before anything is known to base it on.
 * - eta_confidence = 1 / (1 + expected deviation / remaining time): lower when history is scarce or spread out,
 *   when the job's size is not known yet, and for a wait behind many queued tasks.
 * - Completed: eta_seconds 0, eta = completed_at, confidence 1. Failed or cancelled: all three null.
 * How the estimate is made: docs/ETA.md.
 */
#ifndef PROGRESS_H
#define PROGRESS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PROGRESS_API __attribute__((visibility("default")))
#else
#define PROGRESS_API
#endif

/* The project's one written version: the library, progress-server --version, the Python package and its wheel,
 * and the pkg-config file all take it from these three lines. */
#define PROGRESS_VERSION_MAJOR 0
#define PROGRESS_VERSION_MINOR 1
#define PROGRESS_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH; compare with progress_version_number() at run time. */
#define PROGRESS_VERSION_NUMBER \
    (PROGRESS_VERSION_MAJOR * 10000 + PROGRESS_VERSION_MINOR * 100 + PROGRESS_VERSION_PATCH)

/* Status codes. Pinned: new codes are appended, none is ever renumbered or removed. */
typedef enum {
    PROGRESS_OK = 0,
    PROGRESS_E_INVALID_ARGUMENT = -1, /* NULL engine/string, bad task id, bad enum value, bad UTF-8 */
    PROGRESS_E_NOT_FOUND = -2,        /* no such task (or it expired after retention_seconds) */
    PROGRESS_E_EXISTS = -3,           /* task id already exists (pass {"resume": true} to reopen it) */
    PROGRESS_E_STATE = -4,            /* not allowed in the task's or stage's current state */
    PROGRESS_E_RANGE = -5,            /* number out of range: NaN, progress outside 0..1, stage index,
                                         steps, a timestamp earlier than the task's last one */
    PROGRESS_E_JSON = -6,             /* malformed JSON, or a JSON value of the wrong type/shape */
    PROGRESS_E_CONFIG = -7,           /* unknown configuration key or bad configuration value */
    PROGRESS_E_UNSUPPORTED = -8,      /* valid request this build cannot serve yet */
    PROGRESS_E_IO = -9,               /* a system call failed (file, socket, thread) */
    PROGRESS_E_LIMIT = -10,           /* a bound was reached (see the message for which) */
    PROGRESS_E_INTERNAL = -11         /* a bug: please report with progress_last_error() */
} progress_status;

typedef struct progress_engine progress_engine;

typedef enum {
    PROGRESS_STAGE_PENDING = 0,
    PROGRESS_STAGE_IN_PROGRESS = 1,
    PROGRESS_STAGE_COMPLETED = 2,
    PROGRESS_STAGE_FAILED = 3,
    PROGRESS_STAGE_SKIPPED = 4
} progress_stage_status;

typedef enum {
    PROGRESS_LOG_DEBUG = 0,
    PROGRESS_LOG_INFO = 1,
    PROGRESS_LOG_WARNING = 2,
    PROGRESS_LOG_ERROR = 3
} progress_log_level;

/* ---- Version, errors, strings ------------------------------------------------------------------ */

/* The library's PROGRESS_VERSION_NUMBER. Check `progress_version_number() == PROGRESS_VERSION_NUMBER`
 * (or at least the same major) to be sure header and loaded library agree. Never fails. */
PROGRESS_API int progress_version_number(void);

/* Message of the last failed call on this thread ("" if none). Owned by the library, valid until the
 * next failing call on this thread. Never NULL. */
PROGRESS_API const char *progress_last_error(void);

/* Static name of a status code, e.g. "PROGRESS_E_NOT_FOUND"; "PROGRESS_E_UNKNOWN" for other values.
 * Never NULL; never freed. */
PROGRESS_API const char *progress_status_string(progress_status status);

/* Frees a string handed out by this library. NULL is a no-op. */
PROGRESS_API void progress_string_free(char *s);

/* ---- Engine ------------------------------------------------------------------------------------ */

/* Opens an engine. `config_json` may be NULL or "{}" for the defaults. Every key is optional; an unknown key is
 * PROGRESS_E_CONFIG, so typos are caught.
 *
 *   key                        default      meaning
 *   listen                     null         "host:port" of the WebSocket + REST listener (port 0: any free one);
 *                                           null: no listener
 *   redis_url                  null         "redis://[[user]:password@]host[:port][/db]" (with a user, AUTH user
 *                                           password: Redis 6 ACL); null: memory only. docs/REDIS.md
 *   redis_preview_max_bytes    2097152      with redis_url, previews up to this size (PNG bytes) are written to
 *                                           Redis too, so every listener of the fleet serves them (0: none);
 *                                           0...33554432. docs/API.md "Previews across hosts"
 *   namespace                  "progress"   the prefix of every Redis key
 *   retention_seconds          86400        finished tasks are kept this long (also their Redis keys' expiry)
 *   throttle_ms                100          at most one non-urgent update per task per this, to subscribers and Redis
 *                                           (to subscribers: a window apart as the runner made them, less at most
 *                                           1/32 of it; docs/ARCHITECTURE.md "The change path")
 *   preview_dir                (temporary)  where preview PNGs are written; by default a private folder removed
 *                                           on close
 *   preview_milestones         [25,50,75]   overall progress (%) at which a preview is taken ([]: none)
 *   preview_every_steps        0            take a preview every N steps instead (0: the milestones)
 *   preview_max_size           512          longest side of a preview, pixels (downscaled with a box filter)
 *   resource_interval_ms       1000         how often executing tasks' resource_usage is sampled: process CPU %,
 *                                           resident memory, GPU utilisation / memory through NVML when
 *                                           libnvidia-ml.so.1 is present. A sample reaches subscribers with the
 *                                           task's next update while the runner reports, and on its own after
 *                                           max(2 s, 2 x this) without one, so it never holds a step back
 *   heartbeat_timeout_seconds  30           with Redis, a listener fails a queued or executing task whose engine has not
 *                                           heartbeated for this long ("worker lost")
 *   cancel_timeout_seconds     60           a cancel request the runner has not answered after this long is
 *                                           warned about once in the task's log; it stays requested (the engine
 *                                           never stops a runner)
 *   auth_token                 null         a token every REST and WebSocket client must send
 *                                           (Authorization: Bearer TOKEN, or ?token=TOKEN); 401 / close 4401.
 *                                           Without it anyone who reaches the port may also cancel tasks
 *   max_connections            1024         WebSocket clients; the engine raises its soft RLIMIT_NOFILE toward the
 *                                           hard limit as far as this needs (never lowering it) and logs an
 *                                           "fd_limit" warning when the hard limit is lower
 *   max_connections_per_ip     null         WebSocket clients from one peer address beyond it are closed (1013)
 *   max_message_bytes          65536        the largest WebSocket message a client may send; a larger one gets an
 *                                           "error" message, then close 1009
 *   max_subscriptions          1000         task ids per connection ("*" counts as none)
 *   dashboard                  true         serve the live dashboard at /
 *   ws_deflate                 false        accept permessage-deflate from WebSocket clients that offer it:
 *                                           messages over 1,024 bytes are compressed once and shared, smaller ones
 *                                           (delta patches) per client against its window; a client offering
 *                                           server_no_context_takeover gets only the shared kind, one limiting
 *                                           server_max_window_bits plain frames (docs/API.md "Compression")
 *   allowed_origins            null         an array of origins ("https://app.example.com", scheme://host[:port];
 *                                           anything else is PROGRESS_E_CONFIG), or ["*"] for any: the browser pages
 *                                           that may use the listener. A WebSocket whose Origin header is not one
 *                                           of them (case-insensitive) is closed with 4403; one without Origin (not
 *                                           a browser) is accepted. REST answers to a listed origin carry CORS
 *                                           headers (docs/API.md, "CORS"); null: WebSockets from any origin, and
 *                                           no cross-origin REST
 *
 * Ranges (PROGRESS_E_CONFIG outside them, as for a value of the wrong type): throttle_ms 0...60000;
 * preview_max_size 16...8192; preview_every_steps 0...1000000; resource_interval_ms 10...3600000;
 * max_connections, max_connections_per_ip and max_subscriptions 1...1000000; max_message_bytes 256...67108864;
 * retention_seconds 0...3153600000 (100 years; with redis_url at least 1 ms is what a key's expiry takes);
 * heartbeat_timeout_seconds 0.15...3153600000; cancel_timeout_seconds 0.001...3153600000; preview_milestones each
 * strictly between 0 and 100; namespace 1-64 letters, digits or -_.:; allowed_origins entries up to 1024 bytes;
 * auth_token not empty, without spaces or control characters; preview_dir not empty. An unknown key is an error
 * (naming the key a typo most likely meant, when one is a few letters away); so is a key given twice, in
 * config_json and in every other JSON object the engine reads (options_json, stages_json, data_json, record_json).
 *
 * With `listen` the engine serves the WebSocket and REST API of SPEC §7-§8 on that port (port 0 = any free
 * port, see progress_engine_port); PROGRESS_E_IO if it cannot bind, PROGRESS_E_CONFIG for a malformed
 * address. A malformed `redis_url` is PROGRESS_E_CONFIG; an unreachable Redis is no error: the engine opens,
 * works from memory, logs the failure on stderr and keeps reconnecting in the background (back-off 50 ms..2 s),
 * then writes what changed meanwhile.
 * On success *out is a new engine owned by the caller (release with progress_engine_close); on error
 * *out is set to NULL. */
PROGRESS_API progress_status progress_engine_open(const char *config_json, progress_engine **out);

/* Stops the engine's threads that change tasks (the Redis subscriber, the maintenance thread, the preview thread
 * once the queued previews are written), detaches counters (reading each a last time), stops the listener (which
 * sends these last changes, then closes every client connection and the listening socket), flushes pending Redis
 * writes and frees the engine. The flush takes at most 2 seconds (then what is left is dropped, counted and logged),
 * counted from when it is asked for: a Redis round under way then spends part of it, and no socket call runs
 * past the bound (each is also bounded by 1 s); with Redis unreachable, closing makes a few short connection
 * attempts within that bound. NULL is a no-op. No other
 * thread may use the engine during or after this call. */
PROGRESS_API void progress_engine_close(progress_engine *engine);

/* The listener's bound TCP port, or -1 when the engine has no listener (or engine is NULL). */
PROGRESS_API int progress_engine_port(const progress_engine *engine);

/* Engine counters as JSON: {"tasks", "updates", "invalid_updates", "events", "logs",
 * "purged_tasks", "attached_counters", "previews_written", "previews_failed", "previews_dropped"}; with
 * redis_url also "redis_connected" (0/1), "redis_queue_depth" (tasks not yet written), "redis_task_writes",
 * "redis_commands", "redis_command_errors", "redis_dropped_events", "redis_dropped_logs",
 * "redis_dropped_writes", "redis_reconnects", "redis_remote_updates", "redis_workers_lost",
 * "redis_previews_too_large" (previews kept out of Redis by redis_preview_max_bytes).
 * The listener's GET /metrics shows each of them too (Prometheus text), beside its own connection figures.
 * *out_json is the caller's; free with progress_string_free. */
PROGRESS_API progress_status progress_engine_stats_get(progress_engine *engine, char **out_json);
/* Alias of progress_engine_stats_get (its name before the progress_<object>_<verb> rule); kept for what links it. */
PROGRESS_API progress_status progress_engine_stats(progress_engine *engine, char **out_json);

/* ---- Tasks ------------------------------------------------------------------------------------- */

/* Creates a task. task_id: 1-256 printable characters of UTF-8: no control characters, and no invisible format
 * characters (bidi overrides, zero-width spaces; the zero-width joiner and non-joiner are fine), line or paragraph
 * separators, private-use or unassigned code points (PROGRESS_E_INVALID_ARGUMENT names the one found). An id is its
 * bytes: nothing normalises it, so "caf\u00e9" and "cafe\u0301" are two tasks (and two batches as batch_id). A new
 * task's id is not "*" (every task, in a subscription) and, where it has slashes, has no empty, "." or ".." segment
 * and does not end in "/logs", "/history" or "/cancel": HTTP resolves those in a REST path, which would then name
 * another task (PROGRESS_E_INVALID_ARGUMENT). template_id: non-empty.
 * template_category may be NULL. The task's stages are, in order of preference: the stages registered
 * for template_id, the defaults of template_category ("image_generation", "video_generation",
 * "audio_generation", "text_generation"), else "queue / processing / finalizing".
 * options_json may be NULL; keys: quality (string), batch_id (string), resource_config (object),
 * metadata (object), resume (bool), reuse (bool), timestamp (epoch seconds). metadata is the host's own, with one member the
 * engine reads: "workload", the job's size as the runner knows it at creation, an object of positive numbers by
 * name ({"steps": 30, "megapixels": 1.0}, {"frames": 81, ...}, {"seconds": 20}, {"tiles": 12}); the ETA then
 * learns from the completed runs of the nearest sizes that gave the same names (docs/ETA.md; other members and
 * values are ignored). An existing id gives PROGRESS_E_EXISTS
 * unless resume is true, in which case the existing task is kept (PROGRESS_OK): its state stays, and a task
 * that had not finished records a "resumed" event (seq advances; watchers see the runner is back), or reuse is true
 * and the existing task has finished (completed, failed or cancelled): a new task replaces it, as one past its
 * retention is (the id run again; watchers get the new one from its first seq). resume and reuse together are
 * PROGRESS_E_INVALID_ARGUMENT. With redis_url and
 * resume, a task this engine does not hold is read back from Redis (a restarted runner's task) and goes on
 * from its stored state, seq included; without resume the id starts a new task, replacing what Redis held. When
 * Redis cannot be read at that moment (unreachable, not answering within its 200 ms read timeout, or a read failed
 * within the last second), resume creates nothing and returns PROGRESS_E_IO, so that a stored task is never
 * taken for an absent one and started anew over its state: call again once Redis answers.
 * A task whose first stage is named "queue" is in that stage from its creation (status "queued");
 * it becomes "executing" when a later stage is entered. */
PROGRESS_API progress_status progress_task_create(progress_engine *engine, const char *task_id,
                                                  const char *template_id, const char *template_category,
                                                  const char *options_json);

/* Sets stage `stage` (0-based) of a task:
 *   IN_PROGRESS enters the stage (earlier open stages are completed with their durations; a stage
 *     already finished gives PROGRESS_E_STATE) and sets its progress;
 *   COMPLETED completes it (progress 1) and, if it was ahead of the current stage, moves there;
 *   SKIPPED marks it skipped (it counts as done in overall_progress);
 *   FAILED fails the stage and the task (error = message, or "stage NAME failed");
 *   PENDING is PROGRESS_E_INVALID_ARGUMENT (stages never go back).
 * progress must be finite and within 0..1 (PROGRESS_E_RANGE). message may be NULL (kept as it was). Checked in
 * this order: the task is active (PROGRESS_E_STATE), the stage exists and progress is in range (PROGRESS_E_RANGE),
 * then the message, then the status. */
PROGRESS_API progress_status progress_stage_update(progress_engine *engine, const char *task_id, int stage,
                                                   progress_stage_status status, double progress,
                                                   const char *message);

/* The sampling-loop hot path: sets the current stage's progress to step / total_steps.
 * 0 <= step <= total_steps and total_steps > 0 (PROGRESS_E_RANGE otherwise). While the task is still
 * before its main stage (the stage of largest weight), the task first moves to the main stage.
 * message may be NULL (kept as it was). The step's time is the system clock as of its last tick (up to one tick,
 * 1-10 ms, old; never before the task's previous event); the ETA measures the pace over intervals of many ticks. Takes one shard lock; under it, when the task goes from unchanged to
 * changed since the listener or the Redis writer last took it, the listener's queue lock (to queue the task and
 * wake the listener thread) and the Redis writer's queue lock; once per task, when the step moves it out of its
 * queue, the engine's queue-board lock; with a Swift change stream open in the process (the Swift API's
 * changes(of:)), the streams' locks. Allocates only to copy a changed message and, for an urgent change (a stage
 * change, such as the step that moves the task into its main stage), one snapshot for the listener; the
 * consumers' queues may grow. */
PROGRESS_API progress_status progress_update(progress_engine *engine, const char *task_id, long long step,
                                             long long total_steps, const char *message);

/* A runner event (the seed's callback(event, data)); data_json may be NULL ("{}"):
 *   "execution_progress" {step, total_steps, message?, preview_path?}  as progress_update; a PNG at
 *                        preview_path is decoded (libpng) for the preview when one is due (16-bit
 *                        samples without a gAMA or sRGB chunk are taken as sRGB, as browsers show them)
 *   a stage's name      {progress?, message?, variant?}               enter that stage; variant (1-64 bytes)
 *                        says how the stage runs this time, e.g. "cold" (model read from disk) or "cached"
 *                        (model resident): the ETA reads that stage's history, while it lasts, from runs whose
 *                        same stage had the same variant; kept in the completion record ("stage_variants")
 *   "log"               {level?: "debug"|"info"|"warning"|"error" (default "info"), message}
 *   "resources"         {cpu_percent?, memory_mb?, gpu_percent?, gpu_memory_mb?}  runner's own figures,
 *                        which take precedence over the sampler's from then on
 *   "execution_complete" {}                                            as progress_task_complete
 *   "execution_error"   {error}                                        as progress_task_fail
 * Every data object may carry "timestamp". Unknown events are logged in the task's log at debug
 * level and ignored (PROGRESS_OK). Bad data gives an error code and changes nothing. */
PROGRESS_API progress_status progress_event(progress_engine *engine, const char *task_id, const char *event,
                                            const char *data_json);

/* Appends to the task's log (bounded: the newest 1000 entries are kept). message must not be NULL. */
PROGRESS_API progress_status progress_log(progress_engine *engine, const char *task_id, progress_log_level level,
                                          const char *message);

/* A preview from raw 8-bit pixels: gray (channels 1), RGB (3) or RGBA (4), rows `stride` bytes apart
 * (>= width * channels), top row first; `pixels` must hold height * stride bytes. A preview is made when
 * the task's overall progress first crosses each of `preview_milestones` (or, with `preview_every_steps`
 * N > 0, each time the step crosses the next multiple of N), once each: then the pixels are copied on this thread (the only cost of the
 * call) and downscaled to `preview_max_size` (box filter) and PNG-encoded on the engine's preview thread,
 * written atomically into `preview_dir` (by default a private temporary folder removed on close) and
 * served at the task's "preview_url". Video tasks name the file after the frame (the latest step).
 * When no preview is due the call returns PROGRESS_OK at once without reading the pixels; a task that
 * already completed, failed or was cancelled gives PROGRESS_E_STATE (it takes no new previews). A preview that
 * fails (or is dropped because the encoder is busy) is logged in the task's log and counted in
 * progress_engine_stats_get; the task goes on. A preview accepted before the task ended is still attached
 * when it is ready, even if the task completed, failed or was cancelled meanwhile: its "preview_url"
 * changes (and "seq" advances) while its status stays terminal. Preview files are deleted when their
 * task expires. With redis_url each preview is also written to Redis (up to redis_preview_max_bytes) with the
 * task's expiry, by the Redis writer thread, and "preview_url" carries the task id, so any listener on the same
 * Redis serves it. */
PROGRESS_API progress_status progress_preview_pixels(progress_engine *engine, const char *task_id,
                                                     const unsigned char *pixels, int width, int height,
                                                     int stride, int channels);

/* Whether a preview is due for the task: *due is 1 exactly when progress_preview_pixels called now (with valid
 * pixels) would take the preview, by the rule above and with the steps of an attached counter counted; else 0 (no
 * preview due, a finished task, or an engine whose preview thread could not start). Nothing is copied or marked,
 * so a runner can ask every step and render or decode an image only when the answer is 1. Takes the task's shard
 * lock only, as progress_update does; the id is not copied. Any thread. Errors: PROGRESS_E_INVALID_ARGUMENT
 * (due or task_id NULL, an invalid id), PROGRESS_E_NOT_FOUND (no such task); *due is 0 on error. */
PROGRESS_API progress_status progress_preview_due(progress_engine *engine, const char *task_id, int *due);

/* Completes the task: open stages complete, overall_progress becomes 100, status "completed", and a
 * completion record (per-stage durations and profiles, the template category) is stored for ETA. A finished task
 * gives PROGRESS_E_STATE. */
PROGRESS_API progress_status progress_task_complete(progress_engine *engine, const char *task_id);

/* Fails the task: the current stage fails, status "failed", `error` kept (may be NULL: "unknown error"). */
PROGRESS_API progress_status progress_task_fail(progress_engine *engine, const char *task_id, const char *error);

/* Cancels the task: status "cancelled", `reason` kept in "error" (may be NULL). This is also how a runner
 * acknowledges a cancel request (progress_task_cancel_requested). */
PROGRESS_API progress_status progress_task_cancel(progress_engine *engine, const char *task_id,
                                                  const char *reason);

/* Whether someone asked the task's runner to stop: *requested is 1 from the moment a cancel request for the task
 * is recorded (REST POST /api/v1/progress/tasks/{id}/cancel, the WebSocket "cancel" message, on this engine's
 * listener or, with redis_url, on any listener of the fleet) until the task finishes; else 0, a finished task
 * included. The task's TaskProgress shows the same as "cancel_requested" (and the requester's "cancel_reason").
 * The runner acknowledges by stopping its work and calling progress_task_cancel; it may also complete or fail the
 * task. The engine never stops a runner: a request not answered within cancel_timeout_seconds stays requested and
 * is warned about once in the task's log. A request made on another engine of the fleet reaches this one through
 * Redis, read by the Redis writer thread, within about a second. Cheap enough to call every step: it takes the
 * task's shard lock only, never the network, and the id is not copied. Any thread. Errors:
 * PROGRESS_E_INVALID_ARGUMENT (requested or task_id NULL, an invalid id), PROGRESS_E_NOT_FOUND (no such task in
 * this engine); *requested is 0 on error. */
PROGRESS_API progress_status progress_task_cancel_requested(progress_engine *engine, const char *task_id,
                                                            int *requested);

/* The task's state as TaskProgress JSON (SPEC §6), with "eta", "eta_seconds" and "eta_confidence" as described
 * under ETA at the top of this header. *out_json is the caller's (progress_string_free). */
PROGRESS_API progress_status progress_task_get(progress_engine *engine, const char *task_id, char **out_json);

/* BatchProgress JSON. task_ids_csv ("a,b,c") may be NULL or "": then the tasks created with this
 * batch_id. Ids not found are listed in "missing". "eta" is the latest ETA of the tasks that will finish (failed
 * and cancelled ones aside), null when one of them has none; each task's own "eta" is in "tasks".
 * *out_json is the caller's. */
PROGRESS_API progress_status progress_batch_get(progress_engine *engine, const char *batch_id,
                                                const char *task_ids_csv, char **out_json);

/* {"task_id", "logs": [{timestamp, level, message, stage}], "dropped"}: entries at `since` (epoch seconds;
 * 0 = all) or later, of level min_level or above, oldest first; "dropped" = older entries pushed out of the
 * task's log (it keeps the newest 1000). *out_json is the caller's. */
PROGRESS_API progress_status progress_task_logs_get(progress_engine *engine, const char *task_id, double since,
                                                    progress_log_level min_level, char **out_json);
/* Alias of progress_task_logs_get (its name before the progress_<object>_<verb> rule); kept for what links it. */
PROGRESS_API progress_status progress_task_logs(progress_engine *engine, const char *task_id, double since,
                                                progress_log_level min_level, char **out_json);

/* {"task_id", "events": [{seq, timestamp, type, stage, progress, overall_progress, status, message}]}:
 * the task's events with seq > after_seq (0 = all kept), oldest first. Every change is an event (each
 * progress step too; runs of sampled resource figures keep only their latest); the newest 4096 events of
 * a task are kept, "first_seq" tells the oldest one still held, "last_seq" the task's current seq.
 * For a task this engine does not hold, the history comes from Redis' stream (docs/REDIS.md), where a flood
 * of steps may have been thinned to the latest step per write; for one it holds only in part (restored by a
 * resume, mirrored, or past the 4096 kept), the older events come from that stream too (and, for a restored or
 * mirrored task, the older log entries from Redis in progress_task_logs_get). *out_json is the caller's. */
PROGRESS_API progress_status progress_task_history_get(progress_engine *engine, const char *task_id,
                                                       long long after_seq, char **out_json);
/* Alias of progress_task_history_get (its name before the progress_<object>_<verb> rule); kept for what links
 * it. */
PROGRESS_API progress_status progress_task_history(progress_engine *engine, const char *task_id,
                                                   long long after_seq, char **out_json);

/* ---- Step counters: per-step progress without a call per step ---------------------------------- */

/* Attaches caller-owned memory `counter[0]` = step, `counter[1]` = total_steps to a task. The
 * maintenance thread reads it every min(throttle_ms, 50) ms (at least every 1 ms) and, when either
 * value changed, applies it exactly as progress_update would; invalid pairs are counted, logged and skipped.
 * The caller writes the two values with plain (or relaxed atomic) 64-bit stores; each is read
 * atomically. The memory must stay valid until progress_task_detach_counter() returns, or the task
 * is completed/failed/cancelled, or the engine is closed; each of these reads it a last time first.
 * One counter per task: attaching again replaces the previous one. */
PROGRESS_API progress_status progress_task_attach_counter(progress_engine *engine, const char *task_id,
                                                          const volatile long long *counter);

/* Reads the task's counter a last time, applies it (an update like any other: counted, sent to watchers,
 * written through), and stops reading it. PROGRESS_E_NOT_FOUND if the task has no counter attached. */
PROGRESS_API progress_status progress_task_detach_counter(progress_engine *engine, const char *task_id);

/* ---- Templates and ETA history ----------------------------------------------------------------- */

/* Registers the stages of a template: [{"name", "description"?, "weight"}], non-empty, unique
 * non-empty names, finite weights >= 0 with a positive sum; weights are normalised to sum 1. Tasks
 * created afterwards with this template_id use them; existing tasks keep theirs. */
PROGRESS_API progress_status progress_register_template_stages(progress_engine *engine, const char *template_id,
                                                               const char *stages_json);

/* Stores a completion record (the seed's record_completion): {"task_id"?, "template_id", "template_category"?,
 * "quality"?, "stage_durations"?: {"0": seconds, ...}, "stage_profiles"?, "total_duration", "resource_config"?,
 * "timestamp"?, "workload"?, "stage_variants"?}. "stage_profiles" {"2": {"steps"?, "head", "step_seconds", "tail"?, "drift"?}, ...}
 * says how stages that reported progress spent their time: seconds to the first report, robust seconds per step
 * (per whole stage without "steps"), seconds after progress reached 1, and "drift" r > -1, the pace's change with
 * progress (pace = a x (1 + r x progress)); the engine writes them in its own records. "workload" is the task's
 * metadata.workload (positive numbers by name; see progress_task_create); "stage_variants" {"1": "cold", ...}
 * the variants its stages were entered with (see progress_event). Records without
 * a category serve their own template only. The newest 1000 records per template + quality + resource_config
 * are kept, for at most 1000 such combinations (the one with the oldest newest record goes first). */
PROGRESS_API progress_status progress_eta_record_completion(progress_engine *engine, const char *record_json);

/* {"template_id", "quality", "records": [...]}: stored completion records of a template, of one
 * quality (quality may be NULL: every quality), oldest first. *out_json is the caller's. */
PROGRESS_API progress_status progress_eta_records_get(progress_engine *engine, const char *template_id,
                                                      const char *quality, char **out_json);

#ifdef __cplusplus
}
#endif

#endif /* PROGRESS_H */
