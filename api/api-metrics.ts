/**
 * Prometheus metrics of one `sandqueue api` process. Labels come from small
 * fixed sets: the route pattern (never a job id), method, status code,
 * error code, and `key`, the API key's name (keys are created by the
 * operator, so they are few).
 */
import type { Queue } from "bullmq";
import { Counter, Gauge, Histogram, collectDefaultMetrics, Registry } from "prom-client";
import { ErrorCodes, withTimeout } from "../errors/index.js";
import type { DeliveryOutcome } from "./webhook-queue.js";

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const OUTCOMES: DeliveryOutcome[] = ["delivered", "retried", "dead"];
/** Codes the API answers with; their series exist from the start (rate() sees the first one). */
const API_CODES = [
  ErrorCodes.REQUEST_INVALID,
  ErrorCodes.UNSUPPORTED_MEDIA_TYPE,
  ErrorCodes.BODY_TOO_LARGE,
  ErrorCodes.UNAUTHORIZED,
  ErrorCodes.FORBIDDEN,
  ErrorCodes.RATE_LIMITED,
  ErrorCodes.ACTIVE_JOBS_LIMIT,
  ErrorCodes.SPEC_INVALID,
  ErrorCodes.LIMIT_ABOVE_MAX,
  ErrorCodes.CALLBACK_REFUSED,
  ErrorCodes.JOB_NOT_FOUND,
];
const KNOWN_CODES = new Set<string>(Object.values(ErrorCodes));
const WEBHOOK_STATES = { pending: "waiting-children", waiting: "waiting", retrying: "delayed", dead: "failed" } as const;

export class ApiMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"queue" | "route" | "method" | "status">;
  private readonly latency: Histogram<"queue" | "route" | "method">;
  private readonly submitted: Counter<"queue" | "key">;
  private readonly refused: Counter<"queue" | "code">;
  private readonly open: Gauge<"queue" | "kind">;
  private readonly deliveries: Counter<"queue" | "outcome">;
  private readonly deliverySeconds: Histogram<"queue">;

  constructor(
    private readonly queue: string,
    webhookQueue: () => Queue | undefined,
    opts: { defaultMetrics?: boolean } = {},
  ) {
    const registers = [this.registry];
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: "sandqueue_api_requests_total",
      help: "HTTP requests answered, by route pattern, method and status code.",
      labelNames: ["queue", "route", "method", "status"],
      registers,
    });
    this.latency = new Histogram({
      name: "sandqueue_api_request_duration_seconds",
      help: "Time to answer a request, by route pattern (long-polls that waited are the route with ' (wait)').",
      labelNames: ["queue", "route", "method"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.submitted = new Counter({
      name: "sandqueue_api_jobs_submitted_total",
      help: "Jobs enqueued through the API, by API key name.",
      labelNames: ["queue", "key"],
      registers,
    });
    this.refused = new Counter({
      name: "sandqueue_api_refused_total",
      help: "Requests answered with an error, by SANDQ_ERR_* code.",
      labelNames: ["queue", "code"],
      registers,
    });
    this.open = new Gauge({
      name: "sandqueue_api_open_requests",
      help: "Requests held open now: long-polls (?wait=) and event streams.",
      labelNames: ["queue", "kind"],
      registers,
    });
    this.deliveries = new Counter({
      name: "sandqueue_webhook_deliveries_total",
      help: "Webhook delivery attempts by outcome: delivered (2xx), retried (will be tried again), dead (last try failed; dead-lettered).",
      labelNames: ["queue", "outcome"],
      registers,
    });
    this.deliverySeconds = new Histogram({
      name: "sandqueue_webhook_delivery_duration_seconds",
      help: "Time of one webhook delivery attempt (sign, connect, POST, answer).",
      labelNames: ["queue"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    const self = this;
    new Gauge({
      name: "sandqueue_webhook_jobs",
      help: "Webhook deliveries by state, read from Redis at scrape time: pending (job still running), waiting, retrying, dead (dead letters).",
      labelNames: ["queue", "state"],
      registers,
      async collect() {
        const q = webhookQueue();
        if (!q) return;
        const counts = await withTimeout(q.getJobCounts(...Object.values(WEBHOOK_STATES)), 250).catch(() => null);
        if (!counts) return;
        for (const [state, bull] of Object.entries(WEBHOOK_STATES)) this.set({ queue: self.queue, state }, counts[bull] ?? 0);
      },
    });
    for (const outcome of OUTCOMES) this.deliveries.inc({ queue, outcome }, 0);
    for (const code of API_CODES) this.refused.inc({ queue, code }, 0);
    for (const kind of ["longpoll", "sse"]) this.open.set({ queue, kind }, 0);
    this.deliverySeconds.zero({ queue });
  }

  request(route: string, method: string, status: number, seconds: number): void {
    this.requests.inc({ queue: this.queue, route, method, status: String(status) });
    this.latency.observe({ queue: this.queue, route, method }, seconds);
  }

  submittedJobs(key: string, n: number): void {
    this.submitted.inc({ queue: this.queue, key }, n);
  }

  /** The key's series exists at 0 from its first request. */
  keySeen(key: string): void {
    this.submitted.inc({ queue: this.queue, key }, 0);
  }

  refusal(code: string): void {
    this.refused.inc({ queue: this.queue, code: KNOWN_CODES.has(code) ? code : "other" });
  }

  held(kind: "longpoll" | "sse", delta: 1 | -1): void {
    this.open.inc({ queue: this.queue, kind }, delta);
  }

  delivery(outcome: DeliveryOutcome, seconds: number): void {
    this.deliveries.inc({ queue: this.queue, outcome });
    this.deliverySeconds.observe({ queue: this.queue }, seconds);
  }
}
