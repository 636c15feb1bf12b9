/**
 * Leases of attached instances: one job at a time per instance of an
 * attached service, across workers on any machine. A lease is a Northflank
 * secret group named after the instance, made through the SDK: the service
 * refuses a second group of the same name (409), so whoever creates it holds
 * the instance, and deleting it frees the instance. The group is restricted
 * to no service and holds no variable, so it reaches no container: the
 * attached service itself is never touched. Its description records who
 * holds it and until when (the sandbox's lifetime): a lease whose holder has
 * no heartbeat is broken by any worker's reaper, an expired one by the next
 * acquire.
 */
import { createHash } from "node:crypto";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { statusOf } from "./errors.js";
import type { NorthflankApi } from "./api.js";

export const LEASE_PREFIX = "sqlease-";

export interface LeaseRecord {
  /** Label-safe id of the holding worker. */
  worker: string;
  job?: string;
  service: string;
  instance: string;
  /** ms since the epoch; past it the lease may be broken. */
  expiresAt: number;
}

export interface Lease {
  id: string;
  record: LeaseRecord;
}

export function leaseName(serviceId: string, instance: string): string {
  return LEASE_PREFIX + createHash("sha256").update(`${serviceId}/${instance}`).digest("hex").slice(0, 20);
}

function parseRecord(description: string | undefined): LeaseRecord | null {
  try {
    const r = JSON.parse(description ?? "") as Partial<LeaseRecord>;
    return typeof r.worker === "string" && typeof r.service === "string" && typeof r.instance === "string" && typeof r.expiresAt === "number" ? (r as LeaseRecord) : null;
  } catch {
    return null;
  }
}

export class Leases {
  constructor(private readonly api: NorthflankApi) {}

  /** Takes the instance's lease; null when someone else holds it (an expired one is broken first). */
  async take(record: LeaseRecord, signal?: AbortSignal): Promise<Lease | null> {
    const name = leaseName(record.service, record.instance);
    for (let tries = 0; tries < 2; tries++) {
      try {
        const r = await this.api.call(
          `take lease ${name}`,
          () =>
            this.api.client.create.secret({
              parameters: this.api.project,
              data: {
                name,
                description: JSON.stringify(record),
                secretType: "environment",
                priority: 0,
                // Reaches nothing: restricted, and to no service.
                restrictions: { restricted: true, nfObjects: [], tags: [] },
              },
            }),
          { pass: [409], ...(signal ? { signal } : {}) },
        );
        return { id: (r.data as { id?: string }).id ?? name, record };
      } catch (err) {
        if (statusOf(err) !== 409) throw err;
      }
      const held = await this.get(name, signal);
      if (held && held.record.expiresAt > Date.now()) return null;
      // Expired (or unreadable, or gone meanwhile): broken, then taken again.
      if (held) await this.drop(held.id);
    }
    return null;
  }

  async get(id: string, signal?: AbortSignal): Promise<Lease | null> {
    try {
      const r = await this.api.call(`read lease ${id}`, () => this.api.client.get.secret({ parameters: { ...this.api.project, secretId: id } }), {
        pass: [404],
        ...(signal ? { signal } : {}),
      });
      const record = parseRecord(r.data.description);
      return { id: r.data.id ?? id, record: record ?? { worker: "", service: "", instance: "", expiresAt: 0 } };
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
  }

  /** Frees an instance (a lease already gone counts as freed). */
  async drop(id: string): Promise<void> {
    try {
      await this.api.call(`drop lease ${id}`, () => this.api.client.delete.secret({ parameters: { ...this.api.project, secretId: id } }), { pass: [404] });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
  }

  /** Every lease in the project (the SDK's list call, all pages). */
  async list(): Promise<Lease[]> {
    const r = await this.api.call("list leases", () => this.api.client.list.secrets.all({ parameters: this.api.project }));
    const out: Lease[] = [];
    for (const s of r.data?.secrets ?? []) {
      if (!s.name.startsWith(LEASE_PREFIX)) continue;
      const record = parseRecord(s.description);
      if (record) out.push({ id: s.id, record });
    }
    return out;
  }
}

export function instancesBusy(serviceId: string, count: number, waitedMs: number): ProviderError {
  return new ProviderError(
    ErrorCodes.PROVIDER_UNAVAILABLE,
    `northflank: all ${count} running instance(s) of attached service ${serviceId} are leased to other jobs (waited ${waitedMs} ms)`,
    { retryable: true },
  );
}
