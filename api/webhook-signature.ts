/**
 * Standard Webhooks (standardwebhooks.com): each delivery carries
 * `webhook-id` (the same on every retry, for de-duplication),
 * `webhook-timestamp` (unix seconds) and `webhook-signature`
 * (`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`, keyed with the
 * secret's bytes; the secret is shown as `whsec_` + base64).
 *
 * Per-key secrets are derived, not stored: HMAC(master, key id, version).
 * Redis (which every worker host reaches) then holds nothing that can forge
 * a signature; the master lives with the API processes (a file or a
 * variable, as secrets do for workers), and bumping a key's version rotates
 * its secret.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export const WEBHOOK_SECRET_PREFIX = "whsec_";

/** The signing key bytes of an API key's webhook secret. */
export function deriveWebhookKey(master: string, keyId: string, version: number): Buffer {
  return createHmac("sha256", master).update(`sandqueue webhook secret\0${keyId}\0${version}`).digest();
}

/** The secret as the key's owner configures it in their receiver. */
export function formatWebhookSecret(key: Buffer): string {
  return `${WEBHOOK_SECRET_PREFIX}${key.toString("base64")}`;
}

export function parseWebhookSecret(secret: string): Buffer {
  return Buffer.from(secret.startsWith(WEBHOOK_SECRET_PREFIX) ? secret.slice(WEBHOOK_SECRET_PREFIX.length) : secret, "base64");
}

export function sign(key: Buffer, id: string, timestampSec: number, body: string): string {
  return `v1,${createHmac("sha256", key).update(`${id}.${timestampSec}.${body}`).digest("base64")}`;
}

export interface WebhookHeaders {
  "webhook-id": string;
  "webhook-timestamp": string;
  "webhook-signature": string;
}

export function signedHeaders(key: Buffer, id: string, body: string, nowSec = Math.floor(Date.now() / 1000)): WebhookHeaders {
  return { "webhook-id": id, "webhook-timestamp": String(nowSec), "webhook-signature": sign(key, id, nowSec, body) };
}

/**
 * Verifies a delivery as a receiver would: one of the space-separated `v1,`
 * signatures must match (constant time) and the timestamp must be within
 * `toleranceSec` of now (replays of old deliveries are refused).
 */
export function verify(key: Buffer, headers: Record<string, string | undefined>, body: string, toleranceSec = 300, nowSec = Date.now() / 1000): boolean {
  const id = headers["webhook-id"];
  const ts = headers["webhook-timestamp"];
  const sigs = headers["webhook-signature"];
  if (!id || !ts || !sigs || !/^\d+$/.test(ts)) return false;
  if (Math.abs(nowSec - Number(ts)) > toleranceSec) return false;
  const expected = Buffer.from(sign(key, id, Number(ts), body).slice(3), "base64");
  return sigs.split(" ").some((s) => {
    if (!s.startsWith("v1,")) return false;
    const got = Buffer.from(s.slice(3), "base64");
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}
