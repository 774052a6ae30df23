// Types of progress-client.js. The JSON shapes are the listener's (SPEC §6, §7); fields the engine may add
// later are allowed through the index signatures.

export type TaskStatus = "queued" | "executing" | "completed" | "failed" | "cancelled";
export type StageStatus = "pending" | "in_progress" | "completed" | "failed" | "skipped";
export type LogLevel = "debug" | "info" | "warning" | "error";

export interface ResourceUsage {
  cpu_percent: number | null;
  memory_mb: number | null;
  gpu_percent: number | null;
  gpu_memory_mb: number | null;
}

export interface StageProgress {
  name: string;
  description: string | null;
  weight: number;
  status: StageStatus;
  /** 0–1. */
  progress: number;
  /** Seconds, once the stage is finished. */
  duration: number | null;
  message: string | null;
  started_at: string | null;
  completed_at: string | null;
  [field: string]: unknown;
}

export interface TaskProgress {
  task_id: string;
  template_id: string;
  template_category: string | null;
  quality: string | null;
  batch_id: string | null;
  status: TaskStatus;
  current_stage: number;
  total_stages: number;
  /** Percent, 0–100. */
  overall_progress: number;
  /** ISO-8601 UTC. */
  eta: string | null;
  eta_seconds: number | null;
  eta_confidence: number | null;
  preview_url: string | null;
  /** Keyed "0", "1", … */
  stages: Record<string, StageProgress>;
  resource_usage: ResourceUsage;
  seq: number;
  created_at: string | null;
  updated_at: string | null;
  started_at: string | null;
  completed_at: string | null;
  error: string | null;
  /** True from a cancel request until the task finishes (its runner answers by cancelling it). */
  cancel_requested: boolean;
  /** The request's reason while cancel_requested (null without one). */
  cancel_reason: string | null;
  [field: string]: unknown;
}

export interface BatchProgress {
  batch_id: string;
  total_tasks: number;
  counts: Record<TaskStatus, number>;
  /** Mean over the batch's tasks, percent. */
  overall_progress: number;
  eta: string | null;
  tasks: Record<string, { status: TaskStatus; overall_progress: number; eta: string | null }>;
  /** Asked-for ids that no task has. */
  missing: string[];
  [field: string]: unknown;
}

/** A `progress.update`: the task's whole state at `seq`. With the `lazyData` option, `data` is a getter that parses
 *  the message when first read (and keeps what it read). */
export interface UpdateMessage {
  type: "progress.update";
  task_id: string;
  seq: number;
  /** A missed event replayed after a reconnect; `data` is the task as of that event. */
  replayed?: true;
  /** On the current state after a resume: whether every missed event was replayed. */
  recovered?: boolean;
  data: TaskProgress;
}

export interface LogMessage {
  type: "task.log";
  task_id: string;
  entry: { timestamp: string; level: LogLevel; message: string; stage: number | null };
}

/** The events missed between `last_seq` and `seq` could not be replayed: refetch what you derive from them. */
export interface ResyncEvent {
  task_id: string;
  /** The seq of the update that follows (lower than last_seq when the task was made anew). */
  seq: number;
  /** The last seq delivered before. */
  last_seq: number;
}

/** After a reconnect, once the listener has sent everything the new subscription brought. */
export interface ResumedEvent {
  /** Watched tasks the listener sent again (each task known before the connection was lost that it still has). */
  tasks: number;
  /** Missed events replayed (`update`s with `replayed: true`). */
  replayed: number;
  /** Watched tasks the listener did not send again: it no longer has them (an embedded listener restarted without
   *  Redis, a task past its retention). They are not resumed any more; an update of one, should it come back, is
   *  delivered as after a `resync`. */
  gone: string[];
}

/** The connection was lost, or an attempt failed: the next attempt starts in `delay` ms. */
export interface RetryEvent {
  /** 1 for the first attempt after a connection was lost (or the client's first one failed), then 2, 3, … */
  attempt: number;
  /** ms until the attempt. */
  delay: number;
  /** The close code and reason of the connection or attempt that ended (absent after reconnect() while waiting). */
  code?: number;
  reason?: string;
}

export type ConnectionState = "connecting" | "open" | "closed";

export interface StateDetail {
  /** The close code that caused the change, if any. */
  code?: number;
  reason?: string;
}

export interface ProgressClientEvents {
  update: (message: UpdateMessage) => void;
  log: (message: LogMessage) => void;
  error: (error: ProgressError | Error) => void;
  state: (state: ConnectionState, detail: StateDetail) => void;
  resync: (event: ResyncEvent) => void;
  resumed: (event: ResumedEvent) => void;
  retry: (event: RetryEvent) => void;
}

export interface ProgressClientOptions {
  /** The engine's base URL: http(s)://host:port or ws(s)://host:port (a path prefix is kept). In a page,
   *  defaults to the page's origin. */
  url?: string;
  /** The listener's auth_token; sent as ?token= (a browser WebSocket cannot send headers). */
  token?: string;
  /** The id the listener logs this client by; it makes one up when absent. */
  clientId?: string;
  /** First reconnect delay in ms (500); doubles per failed attempt up to maxReconnectDelay (10000), jittered. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** ms between pings (20000); a connection silent for two of them is given up and reconnected. 0: no pings. */
  pingInterval?: number;
  /** Deliver `progress.update`s without parsing them: the client reads task_id and seq from the message's head, and
   *  `data` is parsed when first read. For a page that draws a few of thousands of live tasks. Default false. */
  lazyData?: boolean;
  /** A WebSocket class, where the runtime has none. */
  WebSocket?: new (url: string) => WebSocketLike;
}

/** What the client uses of a WebSocket (declared here so that no DOM types are needed). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // Set by the client, which reads event.data (a string), event.code and event.reason. `any`, so that the DOM's
  // event types and those of other WebSocket libraries fit.
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export interface CancelOptions {
  /** Shown in the task's log and passed to its runner; at most 1,024 bytes. */
  reason?: string | null;
}

export interface SubscribeOptions {
  /** Ask the listener for merge patches (RFC 7386) instead of whole states after the first: fewer bytes per
   *  update. The client applies them, so `update` events carry the whole `data` either way; treat it as
   *  read-only (unchanged parts are shared with the previous update's). */
  delta?: boolean;
  /** At most one update of a task per this many ms on this connection (its latest state); stage changes, the
   *  end and cancel requests still come at once. 0–60000; 0: every update. The connection's setting: the latest
   *  subscribe that gives one sets it. For a page that draws many tasks and needs no more than a few frames a
   *  second of each. */
  intervalMs?: number;
}

/** RFC 7386 JSON Merge Patch, as the client applies delta updates: a new value; `target` is not modified. */
export function applyMergePatch(target: unknown, patch: unknown): unknown;

export class ProgressError extends Error {
  /** The listener's error code ("not_found", "invalid_message", …), a refusal ("unauthorized",
   *  "origin_not_allowed", "no_websocket_endpoint", "invalid_client_id") or "closed". */
  code: string;
  /** The WebSocket close code of a refusal (4401, 4403, 4404, 1008). */
  closeCode?: number;
  constructor(code: string, message: string, closeCode?: number);
}

export class ProgressClient {
  constructor(options?: ProgressClientOptions);
  readonly state: ConnectionState;
  readonly clientId: string | null;
  /** Adds a handler; returns the function that removes it. */
  on<K extends keyof ProgressClientEvents>(name: K, handler: ProgressClientEvents[K]): () => void;
  /** Resolves with the ids once the listener answers `subscribed`. "*" watches every task. */
  subscribe(taskIds: string | Iterable<string>, options?: SubscribeOptions): Promise<string[]>;
  unsubscribe(taskIds: string | Iterable<string>): Promise<void>;
  getProgress(taskId: string): Promise<TaskProgress>;
  getBatchProgress(batchId: string, taskIds?: Iterable<string>): Promise<BatchProgress>;
  /** Asks the task's runner to stop it; resolves once the listener has recorded the request. Rejects with code
   *  "not_found", "conflict" (finished), "invalid_message" or "unavailable". */
  cancel(taskId: string, options?: CancelOptions): Promise<void>;
  /** Drops the connection as a lost network would and connects again after `delay` ms (default 0), resuming as
   *  after any loss; while waiting to reconnect, moves the next attempt to `delay` ms from now. */
  reconnect(delay?: number): void;
  close(): void;
}
