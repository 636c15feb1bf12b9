/**
 * Worker configuration: environment and flags, parsed once at start into a
 * frozen object. A bad value stops the program with a message naming the
 * variable (or flag) and what it accepts.
 */
import { randomBytes } from "node:crypto";
import { hostname, availableParallelism } from "node:os";
import { join, resolve } from "node:path";
import { z } from "zod";
import { ConfigError, ErrorCodes } from "../errors/index.js";
import { DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_REDIS_URL } from "../producer/redis.js";
import { LIMIT_BOUNDS, type ResolvedLimits } from "../producer/job-spec.js";
import { parseDurationMs } from "./snapshot/store.js";
import { DEFAULT_ARCHIVE_LIMITS } from "../providers/archive/index.js";
import { DEFAULT_PROVIDER, providerDefinition, providerSettings } from "../providers/registry.js";
import { NETWORK_POLICY_BOUNDS } from "../producer/network-policy.js";
import { DEFAULT_EGRESS_CONFIG, cidrProblem, type EgressConfig } from "./egress/config.js";
import { isIP } from "node:net";

const int = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, { error: `expected an integer from ${min} to ${max}` })
    .transform(Number)
    .pipe(z.number().int().min(min, { error: `expected an integer from ${min} to ${max}` }).max(max, { error: `expected an integer from ${min} to ${max}` }));

const bool = z.enum(["true", "false"], { error: "expected true or false" }).transform((s) => s === "true");
const redisUrl = z.string().regex(/^rediss?:\/\//, { error: "expected a redis:// or rediss:// URL" });
const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, { error: "expected letters, digits and . _ - (at most 100 characters)" });

const egressDnsServers = z
  .string()
  .transform((v) => v.split(",").map((x) => x.trim()).filter(Boolean))
  .refine((a) => a.length > 0 && a.every((x) => isIP(x) !== 0 || /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):\d{1,5}$/.test(x)), {
    error: "expected DNS server addresses separated by commas (1.2.3.4, 1.2.3.4:5353, [::1]:53)",
  });
const egressCidrs = z
  .string()
  .transform((v) => v.split(",").map((x) => x.trim()).filter(Boolean))
  .refine((a) => a.every((x) => cidrProblem(x) === null), { error: "expected addresses or CIDR ranges separated by commas (10.1.0.0/16, 2001:db8::/32)" });

/** Every setting: its environment variable, its flag (if any), its parser. */
const SETTINGS = {
  redisUrl: { env: "REDIS_URL", flag: "redis", schema: redisUrl },
  queue: { env: "SANDQUEUE_QUEUE", flag: "queue", schema: name },
  prefix: { env: "SANDQUEUE_PREFIX", flag: undefined, schema: name },
  provider: { env: "SANDQUEUE_PROVIDER", flag: "provider", schema: z.string().min(1) },
  concurrency: { env: "SANDQUEUE_CONCURRENCY", flag: "concurrency", schema: int(1, 1024) },
  snapshotsUrl: { env: "SANDQUEUE_SNAPSHOTS", flag: undefined, schema: z.string().regex(/^(file|s3):\/\//, { error: "expected a file:// or s3:// URL" }) },
  secretsDir: { env: "SANDQUEUE_SECRETS_DIR", flag: undefined, schema: z.string().min(1) },
  snapshotRetention: {
    env: "SANDQUEUE_SNAPSHOT_RETENTION",
    flag: undefined,
    schema: z
      .string()
      .regex(/^\d+(ms|s|m|h|d|w)$/, { error: "expected a duration such as 12h, 7d or 4w" })
      .transform((v) => parseDurationMs(v) ?? 0),
  },
  metricsPort: { env: "SANDQUEUE_METRICS_PORT", flag: "metrics-port", schema: int(0, 65535) },
  metricsHost: { env: "SANDQUEUE_METRICS_HOST", flag: undefined, schema: z.string().min(1) },
  graceMs: { env: "SANDQUEUE_SHUTDOWN_GRACE_MS", flag: undefined, schema: int(0, 3_600_000) },
  lockDurationMs: { env: "SANDQUEUE_LOCK_DURATION_MS", flag: undefined, schema: int(1000, 3_600_000) },
  stalledIntervalMs: { env: "SANDQUEUE_STALLED_INTERVAL_MS", flag: undefined, schema: int(1000, 3_600_000) },
  maxStalledCount: { env: "SANDQUEUE_MAX_STALLED_COUNT", flag: undefined, schema: int(0, 100) },
  reapIntervalMs: { env: "SANDQUEUE_REAP_INTERVAL_MS", flag: undefined, schema: int(500, 86_400_000) },
  heartbeatTtlMs: { env: "SANDQUEUE_HEARTBEAT_TTL_MS", flag: undefined, schema: int(1000, 3_600_000) },
  workerId: { env: "SANDQUEUE_WORKER_ID", flag: undefined, schema: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$/, { error: "expected letters, digits and . _ : - (at most 200 characters)" }) },
  defaultTimeoutMs: { env: "SANDQUEUE_DEFAULT_TIMEOUT_MS", flag: undefined, schema: int(LIMIT_BOUNDS.timeoutMs.min, LIMIT_BOUNDS.timeoutMs.max) },
  defaultMemoryMb: { env: "SANDQUEUE_DEFAULT_MEMORY_MB", flag: undefined, schema: int(LIMIT_BOUNDS.memoryMb.min, LIMIT_BOUNDS.memoryMb.max) },
  defaultPids: { env: "SANDQUEUE_DEFAULT_PIDS", flag: undefined, schema: int(LIMIT_BOUNDS.pids.min, LIMIT_BOUNDS.pids.max) },
  defaultMaxOutputBytes: { env: "SANDQUEUE_DEFAULT_MAX_OUTPUT_BYTES", flag: undefined, schema: int(LIMIT_BOUNDS.maxOutputBytes.min, LIMIT_BOUNDS.maxOutputBytes.max) },
  maxTimeoutMs: { env: "SANDQUEUE_MAX_TIMEOUT_MS", flag: undefined, schema: int(LIMIT_BOUNDS.timeoutMs.min, LIMIT_BOUNDS.timeoutMs.max) },
  maxMemoryMb: { env: "SANDQUEUE_MAX_MEMORY_MB", flag: undefined, schema: int(LIMIT_BOUNDS.memoryMb.min, LIMIT_BOUNDS.memoryMb.max) },
  maxPids: { env: "SANDQUEUE_MAX_PIDS", flag: undefined, schema: int(LIMIT_BOUNDS.pids.min, LIMIT_BOUNDS.pids.max) },
  maxOutputBytes: { env: "SANDQUEUE_MAX_OUTPUT_BYTES", flag: undefined, schema: int(LIMIT_BOUNDS.maxOutputBytes.min, LIMIT_BOUNDS.maxOutputBytes.max) },
  workspaceMaxBytes: { env: "SANDQUEUE_WORKSPACE_MAX_BYTES", flag: undefined, schema: int(1, Number.MAX_SAFE_INTEGER) },
  workspaceMaxFiles: { env: "SANDQUEUE_WORKSPACE_MAX_FILES", flag: undefined, schema: int(1, 10_000_000) },
  workspaceMaxDepth: { env: "SANDQUEUE_WORKSPACE_MAX_DEPTH", flag: undefined, schema: int(1, 1024) },
  logJobs: { env: "SANDQUEUE_LOG", flag: undefined, schema: bool },
  // Egress policies (worker/egress/): the proxy every job with a network policy goes through.
  egressMaxRules: { env: "SANDQUEUE_EGRESS_MAX_RULES", flag: undefined, schema: int(0, NETWORK_POLICY_BOUNDS.maxRules) },
  egressMaxBytes: { env: "SANDQUEUE_EGRESS_MAX_BYTES", flag: undefined, schema: int(NETWORK_POLICY_BOUNDS.maxBytes.min, NETWORK_POLICY_BOUNDS.maxBytes.max) },
  egressAllowPrivate: { env: "SANDQUEUE_EGRESS_ALLOW_PRIVATE", flag: undefined, schema: bool },
  egressHostsFile: { env: "SANDQUEUE_EGRESS_HOSTS_FILE", flag: undefined, schema: z.string().min(1) },
  egressDnsServers: { env: "SANDQUEUE_EGRESS_DNS_SERVERS", flag: undefined, schema: egressDnsServers },
  egressDenyAddresses: { env: "SANDQUEUE_EGRESS_DENY_ADDRESSES", flag: undefined, schema: egressCidrs },
  egressUpstreamCaFile: { env: "SANDQUEUE_EGRESS_UPSTREAM_CA", flag: undefined, schema: z.string().min(1) },
  egressConnectTimeoutMs: { env: "SANDQUEUE_EGRESS_CONNECT_TIMEOUT_MS", flag: undefined, schema: int(100, 600_000) },
} as const;

type Settings = typeof SETTINGS;
type Parsed = { [K in keyof Settings]: z.output<Settings[K]["schema"]> };

export interface WorkerConfig {
  readonly redisUrl: string;
  readonly queue: string;
  readonly prefix: string;
  /** A registered provider's name (providers/registry.ts). */
  readonly provider: string;
  /** That provider's settings, parsed from its own variables (registry). */
  readonly providerSettings: Readonly<Record<string, unknown>>;
  readonly concurrency: number;
  readonly snapshotsUrl: string;
  readonly secretsDir: string | undefined;
  /** Snapshots older than this are pruned (at start, then hourly); undefined keeps them. */
  readonly snapshotRetentionMs: number | undefined;
  /** 0 disables the metrics/health HTTP server. */
  readonly metricsPort: number;
  readonly metricsHost: string;
  readonly graceMs: number;
  readonly lockDurationMs: number;
  readonly stalledIntervalMs: number;
  readonly maxStalledCount: number;
  readonly reapIntervalMs: number;
  /** A worker whose heartbeat is older than this is dead: its sandboxes may be reaped. */
  readonly heartbeatTtlMs: number;
  readonly defaultLimits: Readonly<ResolvedLimits>;
  readonly maxLimits: Readonly<ResolvedLimits>;
  readonly workspaceLimits: { readonly maxBytes: number; readonly maxEntries: number; readonly maxDepth: number };
  readonly logJobs: boolean;
  readonly workerId: string;
  /** The egress proxy's settings (SANDQUEUE_EGRESS_*). */
  readonly egress: EgressConfig;
}

/** Where project-local state lives by default (images, snapshots). */
export function stateDir(cwd = process.cwd()): string {
  return resolve(cwd, ".sandqueue");
}

/**
 * Builds the config from environment variables and flags (flags win).
 * `flags` holds raw strings keyed by flag name, as node:util parseArgs gives them.
 */
export function parseWorkerConfig(
  env: NodeJS.ProcessEnv = process.env,
  flags: Record<string, string | undefined> = {},
  overrides: Partial<WorkerConfig> = {},
): WorkerConfig {
  const parsed: Partial<Parsed> = {};
  const problems: string[] = [];
  for (const [key, setting] of Object.entries(SETTINGS) as [keyof Settings, Settings[keyof Settings]][]) {
    const fromFlag = setting.flag ? flags[setting.flag] : undefined;
    const raw = fromFlag ?? env[setting.env];
    if (raw === undefined || raw === "") continue;
    const result = setting.schema.safeParse(raw);
    if (result.success) (parsed as Record<string, unknown>)[key] = result.data;
    else {
      const source = fromFlag !== undefined ? `--${setting.flag}` : setting.env;
      problems.push(`${source}=${JSON.stringify(raw)}: ${result.error.issues[0]?.message ?? "invalid"}`);
    }
  }
  if (problems.length) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `invalid configuration:\n  ${problems.join("\n  ")}`);

  const state = stateDir();
  const maxLimits = {
    timeoutMs: parsed.maxTimeoutMs ?? 10 * 60_000,
    memoryMb: parsed.maxMemoryMb ?? 4096,
    pids: parsed.maxPids ?? 1024,
    maxOutputBytes: parsed.maxOutputBytes ?? 16 * 1024 * 1024,
  };
  const defaultLimits = {
    timeoutMs: parsed.defaultTimeoutMs ?? Math.min(10_000, maxLimits.timeoutMs),
    memoryMb: parsed.defaultMemoryMb ?? Math.min(256, maxLimits.memoryMb),
    pids: parsed.defaultPids ?? Math.min(128, maxLimits.pids),
    maxOutputBytes: parsed.defaultMaxOutputBytes ?? Math.min(1024 * 1024, maxLimits.maxOutputBytes),
  };
  for (const k of Object.keys(defaultLimits) as (keyof ResolvedLimits)[]) {
    if (defaultLimits[k] > maxLimits[k]) problems.push(`default ${k} ${defaultLimits[k]} is above the maximum ${maxLimits[k]}`);
  }
  if (problems.length) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `invalid configuration:\n  ${problems.join("\n  ")}`);

  const concurrency = overrides.concurrency ?? parsed.concurrency ?? availableParallelism();
  const provider = overrides.provider ?? parsed.provider ?? DEFAULT_PROVIDER;
  const fromFlag = flags.provider !== undefined;
  providerDefinition(provider, fromFlag ? "--provider" : SETTINGS.provider.env);
  // Unique per process start: a restarted worker (same host, same pid in a
  // container) must not mistake its predecessor's sandboxes for its own.
  const workerId = overrides.workerId ?? parsed.workerId ?? `${hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`;
  const providerCtx = { workerId, stateDir: state, concurrency };
  const heartbeatTtlMs = parsed.heartbeatTtlMs ?? 15_000;
  const config: WorkerConfig = {
    redisUrl: parsed.redisUrl ?? DEFAULT_REDIS_URL,
    queue: parsed.queue ?? DEFAULT_QUEUE,
    prefix: parsed.prefix ?? DEFAULT_PREFIX,
    provider,
    concurrency,
    snapshotsUrl: parsed.snapshotsUrl ?? `file://${join(state, "snapshots")}`,
    secretsDir: parsed.secretsDir,
    snapshotRetentionMs: parsed.snapshotRetention,
    metricsPort: parsed.metricsPort ?? 9464,
    metricsHost: parsed.metricsHost ?? "127.0.0.1",
    graceMs: parsed.graceMs ?? 30_000,
    lockDurationMs: parsed.lockDurationMs ?? 30_000,
    stalledIntervalMs: parsed.stalledIntervalMs ?? 30_000,
    maxStalledCount: parsed.maxStalledCount ?? 2,
    // Reaping runs once per heartbeat TTL, so a dead worker's sandboxes go within two TTLs.
    reapIntervalMs: parsed.reapIntervalMs ?? heartbeatTtlMs,
    heartbeatTtlMs,
    defaultLimits,
    maxLimits,
    workspaceLimits: {
      maxBytes: parsed.workspaceMaxBytes ?? DEFAULT_ARCHIVE_LIMITS.maxBytes,
      maxEntries: parsed.workspaceMaxFiles ?? DEFAULT_ARCHIVE_LIMITS.maxEntries,
      maxDepth: parsed.workspaceMaxDepth ?? DEFAULT_ARCHIVE_LIMITS.maxDepth,
    },
    logJobs: parsed.logJobs ?? true,
    workerId,
    egress: {
      maxRules: parsed.egressMaxRules ?? DEFAULT_EGRESS_CONFIG.maxRules,
      maxBytes: parsed.egressMaxBytes ?? DEFAULT_EGRESS_CONFIG.maxBytes,
      allowPrivate: parsed.egressAllowPrivate ?? DEFAULT_EGRESS_CONFIG.allowPrivate,
      hostsFile: parsed.egressHostsFile,
      dnsServers: parsed.egressDnsServers,
      denyAddresses: parsed.egressDenyAddresses ?? [],
      upstreamCaFile: parsed.egressUpstreamCaFile,
      connectTimeoutMs: parsed.egressConnectTimeoutMs ?? DEFAULT_EGRESS_CONFIG.connectTimeoutMs,
    },
    ...overrides,
    providerSettings: { ...providerSettings(provider, env, providerCtx), ...overrides.providerSettings },
  };
  return deepFreeze(config);
}

/** Names of every environment variable the worker reads (for docs and --help). */
export function configVariables(): { env: string; flag: string | undefined }[] {
  return Object.values(SETTINGS).map((s) => ({ env: s.env, flag: s.flag }));
}

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (v && typeof v === "object") deepFreeze(v as object);
  return Object.freeze(o);
}
