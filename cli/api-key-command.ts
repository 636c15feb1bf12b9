/**
 * `sandqueue api-key create NAME [...] | ls [--json] | revoke NAME |
 * webhook-secret NAME [--rotate]`: API keys of one queue's HTTP API.
 * `create` prints the key once, as the last line of its output; only its
 * hash is kept.
 */
import { parseArgs } from "node:util";
import { ApiKeyStore, formatRate, parseRate, type ApiKey, type KeyPolicy } from "../api/api-keys.js";
import { parseApiConfig } from "../api/config.js";
import { loadMasterSecret } from "../api/master-secret.js";
import { deriveWebhookKey, formatWebhookSecret } from "../api/webhook-signature.js";
import { LIMIT_BOUNDS } from "../producer/job-spec.js";
import { withProducerConnection } from "../producer/redis.js";
import { parseDurationMs, parseIntFlag, refuseEmpty, usage } from "./args.js";

export const API_KEY_USAGE = `usage: sandqueue api-key create NAME [--max-timeout 30s] [--max-memory MiB] [--rate 50/s] [--max-active N] [--callbacks] [--ui]
       sandqueue api-key ls [--json] | revoke NAME | webhook-secret NAME [--rotate]
  --callbacks   the key may name a callbackUrl (results POSTed, signed with the key's webhook secret)
  --ui          the key opens the queue UI at /ui (every job of the queue)
  (all take --queue NAME and --redis URL; keys belong to one queue)`;

function describe(k: ApiKey): string {
  const parts = [
    k.maxTimeoutMs !== undefined ? `timeout <= ${k.maxTimeoutMs} ms` : null,
    k.maxMemoryMb !== undefined ? `memory <= ${k.maxMemoryMb} MiB` : null,
    k.rate ? `rate ${formatRate(k.rate)} (burst ${k.rate.burst})` : null,
    k.maxActive !== undefined ? `active <= ${k.maxActive}` : null,
    k.callbacks ? "callbacks" : null,
    k.ui ? "ui" : null,
  ].filter(Boolean);
  return parts.length ? parts.join(", ") : "no limits";
}

export async function apiKeyCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      "max-timeout": { type: "string" },
      "max-memory": { type: "string" },
      rate: { type: "string" },
      "max-active": { type: "string" },
      callbacks: { type: "boolean" },
      ui: { type: "boolean" },
      json: { type: "boolean" },
      rotate: { type: "boolean" },
      queue: { type: "string" },
      redis: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
    strict: true,
  });
  const [sub, name, ...extra] = positionals;
  if (values.help) {
    process.stdout.write(`${API_KEY_USAGE}\n`);
    return 0;
  }
  refuseEmpty({ "max-timeout": values["max-timeout"], "max-memory": values["max-memory"], rate: values.rate, "max-active": values["max-active"], queue: values.queue, redis: values.redis });
  if (extra.length) throw usage(`unexpected ${JSON.stringify(extra[0])}\n${API_KEY_USAGE}`);
  const config = parseApiConfig(env, { queue: values.queue, redis: values.redis });
  const needName = (): string => {
    if (!name) throw usage(`api-key ${sub} needs a key NAME\n${API_KEY_USAGE}`);
    return name;
  };
  const out = (s: string): void => void process.stdout.write(`${s}\n`);

  return withProducerConnection(config.redisUrl, async (redis) => {
    const keys = new ApiKeyStore(redis, config.prefix, config.queue);
    switch (sub) {
      case "create": {
        const policy: KeyPolicy = { callbacks: values.callbacks === true, ui: values.ui === true };
        if (values["max-timeout"] !== undefined) {
          policy.maxTimeoutMs = parseDurationMs("max-timeout", values["max-timeout"]);
          if (policy.maxTimeoutMs > LIMIT_BOUNDS.timeoutMs.max) throw usage(`--max-timeout: at most ${LIMIT_BOUNDS.timeoutMs.max / 3_600_000}h`);
        }
        if (values["max-memory"] !== undefined) policy.maxMemoryMb = parseIntFlag("max-memory", values["max-memory"], LIMIT_BOUNDS.memoryMb.min, LIMIT_BOUNDS.memoryMb.max);
        if (values["max-active"] !== undefined) policy.maxActive = parseIntFlag("max-active", values["max-active"], 1, 10_000_000);
        if (values.rate !== undefined) {
          const rate = parseRate(values.rate);
          if (!rate) throw usage(`--rate ${JSON.stringify(values.rate)}: expected requests per unit, such as 50/s, 600/m or 10/h`);
          policy.rate = rate;
        }
        const { key, token } = await keys.create(needName(), policy);
        out(`created API key ${key.name} (id ${key.id}) for queue ${config.queue}: ${describe(key)}`);
        if (key.callbacks) {
          out(`webhook signing secret (Standard Webhooks; again with: sandqueue api-key webhook-secret ${key.name}):`);
          out(`  ${formatWebhookSecret(deriveWebhookKey(loadMasterSecret(config), key.id, key.webhookVersion))}`);
        }
        out("the key (shown once; send it as Authorization: Bearer <key>):");
        out(token);
        return 0;
      }
      case "ls": {
        const list = await keys.list();
        if (values.json) {
          out(JSON.stringify(list.map((k) => ({ ...k, createdAt: new Date(k.createdAt).toISOString() }))));
          return 0;
        }
        if (!list.length) out(`no API keys for queue ${config.queue}`);
        for (const k of list) out(`${k.name.padEnd(24)} ${k.id}  ${new Date(k.createdAt).toISOString()}  ${describe(k)}`);
        return 0;
      }
      case "revoke": {
        if (!(await keys.revoke(needName()))) {
          process.stderr.write(`sandqueue api-key: no key named ${JSON.stringify(name)} for queue ${config.queue}\n`);
          return 1;
        }
        out(`revoked API key ${name}`);
        return 0;
      }
      case "webhook-secret": {
        const key = values.rotate ? await keys.rotateWebhookSecret(needName()) : await keys.get(needName());
        if (!key) {
          process.stderr.write(`sandqueue api-key: no key named ${JSON.stringify(name)} for queue ${config.queue}\n`);
          return 1;
        }
        if (!key.callbacks) process.stderr.write(`note: key ${key.name} may not name a callbackUrl (it was created without --callbacks)\n`);
        out(formatWebhookSecret(deriveWebhookKey(loadMasterSecret(config), key.id, key.webhookVersion)));
        return 0;
      }
      default:
        throw usage(`${sub === undefined ? "missing command" : `unknown command ${JSON.stringify(sub)}`}\n${API_KEY_USAGE}`);
    }
  });
}
