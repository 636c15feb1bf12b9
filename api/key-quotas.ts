/**
 * Per-key quotas, enforced across every API instance through Redis:
 *
 * - a request rate (token bucket, one Lua call, Redis's own clock so
 *   instances with skewed clocks agree);
 * - a cap on the key's jobs queued or running: a set of its job ids,
 *   reserved atomically before the jobs are added; entries whose job has
 *   finished (or is gone) are dropped when the cap would be hit, so the
 *   common case costs one ZCARD inside the script;
 * - maximum limits per spec, checked before anything is enqueued.
 */
import type { Redis } from "ioredis";
import { ApiError, ErrorCodes, SpecError } from "../errors/index.js";
import type { JobSpec } from "../producer/job-spec.js";
import type { ApiKey } from "./api-keys.js";

const TOKEN_BUCKET = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
`;

/** KEYS[1] active set; ARGV: max, job key prefix, now (ms), ids... Returns -1 (reserved) or the count in the way. */
const RESERVE_ACTIVE = `
local max = tonumber(ARGV[1])
local n = #ARGV - 3
local now = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) + n > max then
  local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local k = ARGV[2] .. members[i]
    local exists = redis.call('EXISTS', k) == 1
    -- A reservation whose job is not there yet is young: the add is on its way.
    if (not exists and tonumber(members[i + 1]) < now - 10000) or (exists and redis.call('HEXISTS', k, 'finishedOn') == 1) then
      redis.call('ZREM', KEYS[1], members[i])
    end
  end
  local c = redis.call('ZCARD', KEYS[1])
  if c + n > max then return c end
end
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
return -1
`;

export class KeyQuotas {
  constructor(
    private readonly redis: Redis,
    private readonly keyspace: string,
    /** BullMQ's key of a job is this plus its id. */
    private readonly jobKeyPrefix: string,
  ) {}

  /** RATE_LIMITED with the wait in `retryAfterMs` when the key is over its rate. */
  async takeRequest(key: ApiKey): Promise<void> {
    if (!key.rate) return;
    const wait = Number(await this.redis.eval(TOKEN_BUCKET, 1, `${this.keyspace}rate:${key.id}`, key.rate.perSec, key.rate.burst));
    if (wait > 0) {
      throw new ApiError(ErrorCodes.RATE_LIMITED, `API key ${key.name} is over its rate of ${key.rate.burst} requests at once, ${+key.rate.perSec.toFixed(3)} per second`, {
        retryAfterMs: wait,
      });
    }
  }

  /** Reserves room for `ids` under the key's active-jobs cap, or ACTIVE_JOBS_LIMIT. */
  async reserve(key: ApiKey, ids: string[]): Promise<void> {
    if (key.maxActive === undefined) return;
    if (ids.length > key.maxActive) {
      throw new ApiError(ErrorCodes.ACTIVE_JOBS_LIMIT, `${ids.length} jobs are more than API key ${key.name} may have queued or running at once (${key.maxActive})`);
    }
    const r = Number(await this.redis.eval(RESERVE_ACTIVE, 1, this.activeKey(key), key.maxActive, this.jobKeyPrefix, Date.now(), ...ids));
    if (r >= 0) {
      throw new ApiError(ErrorCodes.ACTIVE_JOBS_LIMIT, `API key ${key.name} has ${r} jobs queued or running; its limit is ${key.maxActive} (asked for ${ids.length} more)`, {
        retryAfterMs: 1000,
      });
    }
  }

  /** Gives back a reservation whose jobs were not added. */
  async release(key: ApiKey, ids: string[]): Promise<void> {
    if (key.maxActive === undefined || ids.length === 0) return;
    await this.redis.zrem(this.activeKey(key), ...ids);
  }

  private activeKey(key: ApiKey): string {
    return `${this.keyspace}active:${key.id}`;
  }
}

/**
 * Applies a key's maximum limits to a validated spec: a larger limit is
 * refused (LIMIT_ABOVE_MAX, naming the field); an omitted one that the
 * workers' default would put above the key's maximum is set to the maximum.
 */
export function applyKeyLimits(spec: JobSpec, key: ApiKey, defaults: { timeoutMs: number; memoryMb: number }): JobSpec {
  const checks = [
    { field: "timeoutMs", max: key.maxTimeoutMs, def: defaults.timeoutMs, unit: "ms" },
    { field: "memoryMb", max: key.maxMemoryMb, def: defaults.memoryMb, unit: "MiB" },
  ] as const;
  let limits = spec.limits;
  for (const c of checks) {
    if (c.max === undefined) continue;
    const given = spec.limits[c.field];
    if (given !== undefined && given > c.max) {
      const p = `limits.${c.field}`;
      throw new SpecError(ErrorCodes.LIMIT_ABOVE_MAX, `${p}: ${given} ${c.unit} is above API key ${key.name}'s maximum of ${c.max} ${c.unit}`, {
        details: { issues: [{ path: p, message: `expected at most ${c.max} ${c.unit} for this API key (got ${given})` }] },
      });
    }
    if (given === undefined && c.def > c.max) limits = { ...limits, [c.field]: c.max };
  }
  return limits === spec.limits ? spec : { ...spec, limits };
}
