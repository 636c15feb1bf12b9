/**
 * The northflank provider: jobs run in Northflank service instances, through
 * @northflank/js-client only (REST for services and leases, its exec
 * session for commands and workspaces). Two modes, as in the seed:
 *
 * - ephemeral: one deployment service per sandbox, created from the job's
 *   image (`sleep infinity` as its command) under a name carrying the owner
 *   and the job (providers/remote/sandbox-names.ts), so a create sent twice
 *   makes one service (409, adopted) and any worker's reaper finds it through
 *   the SDK's list call; the description records that sandqueue created it.
 *   Deleted on release.
 * - attach: jobs run in the running instances of an existing service
 *   (`serviceId`), one job per instance at a time under a lease (lease.ts).
 *   The service is never deleted, paused, scaled or changed: release empties
 *   /workspace in the instance and drops the lease. The ownership decision
 *   (`NorthflankSandbox.ownedByClient`) is made here, once, and deleteService
 *   refuses anything not created as ephemeral, the attached service first.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { acquireAborted } from "../abort.js";
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from "../archive/index.js";
import { LABEL_JOB, labelSafe, type OwnerLiveness, type SandboxProvider, type SandboxSpec } from "../provider.js";
import { namesOfDeadOwners, ownerTag, ownerTagOf, sandboxName } from "../remote/sandbox-names.js";
import { removeEach } from "../remote/reap.js";
import { NorthflankApi, type NorthflankConnection } from "./api.js";
import { NORTHFLANK_CAPABILITIES } from "./capabilities.js";
import { CLEAN_INSTANCE } from "./instance-clean.js";
import { statusOf } from "./errors.js";
import { Leases, instancesBusy } from "./lease.js";
import { NorthflankSandbox } from "./northflank-sandbox.js";

export const NAME_PREFIX = "sq";
/** The description of every service sandqueue creates starts with this: the reaper deletes nothing else. */
export const EPHEMERAL_MARKER = "sandqueue ephemeral sandbox";
const CLEAN_TIMEOUT_MS = 60_000;
/** A lease outlives its sandbox's lifetime by this much before another worker may break it. */
const LEASE_GRACE_MS = 60_000;
/** How long the attached service's image is trusted before it is read again. */
const ATTACHED_IMAGE_TTL_MS = 30_000;

export interface NorthflankProviderOptions extends NorthflankConnection {
  mode: "ephemeral" | "attach";
  /** attach: the existing service jobs run in. */
  serviceId?: string;
  /** ephemeral: the deployment plan of each service (nf-compute-20...). */
  deploymentPlan: string;
  /** ephemeral: job image -> image path; unmapped images are image paths. */
  images: Record<string, string>;
  /** ephemeral: tags every created service carries (they must exist in the team). */
  tags: string[];
  /** The worker id: its hash is in every service name, its label on every lease. */
  owner: string;
  /** auto: commands run directly where the instance has no network but lo, else under the exec shim; shim: always the shim. */
  exec?: "auto" | "shim";
  /** How long a create may take until an instance runs (ephemeral), or a free instance may be waited for (attach). */
  createTimeoutMs: number;
  archiveLimits?: ArchiveLimits;
}

const aborted = (signal: AbortSignal): ProviderError => acquireAborted(signal, "northflank");

export class NorthflankProvider implements SandboxProvider {
  readonly name = "northflank";
  readonly capabilities = NORTHFLANK_CAPABILITIES;
  readonly archiveLimits: ArchiveLimits;
  readonly api: NorthflankApi;
  readonly leases: Leases;
  private readonly ownTag: string;
  private readonly ownerLabel: string;
  private readonly live = new Set<NorthflankSandbox>();
  private closed = false;
  /** The attached service's image path, as last read. */
  private attachedImage: { path: string | undefined; at: number } | undefined;

  constructor(readonly opts: NorthflankProviderOptions) {
    if (opts.mode === "attach" && !opts.serviceId) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, "northflank: attach mode needs a service id (SANDQUEUE_NORTHFLANK_SERVICE_ID)", { retryable: false });
    }
    this.api = new NorthflankApi(opts);
    this.leases = new Leases(this.api);
    this.ownTag = ownerTag(opts.owner);
    this.ownerLabel = labelSafe(opts.owner);
    this.archiveLimits = opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS;
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal } = {}): Promise<NorthflankSandbox> {
    const { signal } = opts;
    if (this.closed) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "northflank provider is closed", { retryable: true });
    if (spec.network === "proxy") {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "the northflank provider has no way to the worker's egress proxy (capability networkPolicy)", { retryable: false });
    }
    if (signal?.aborted) throw aborted(signal);
    const box = this.opts.mode === "attach" ? await this.attach(spec, signal) : await this.createEphemeral(spec, signal);
    this.live.add(box);
    return box;
  }

  // ---- ephemeral ------------------------------------------------------------

  private async createEphemeral(spec: SandboxSpec, signal?: AbortSignal): Promise<NorthflankSandbox> {
    const name = sandboxName(NAME_PREFIX, this.opts.owner, spec);
    const imagePath = this.opts.images[spec.image] ?? spec.image;
    const op = `create service ${name} from ${imagePath}`;
    try {
      await this.api.call(
        op,
        () =>
          this.api.client.create.service.deployment({
            parameters: this.api.project,
            data: {
              name,
              description: `${EPHEMERAL_MARKER}; ${JSON.stringify(spec.labels)}`,
              tags: this.opts.tags,
              billing: { deploymentPlan: this.opts.deploymentPlan },
              deployment: {
                instances: 1,
                external: { imagePath },
                docker: { configType: "customCommand", customCommand: "sleep infinity" },
                metadata: { labels: spec.labels },
              },
            },
          }),
        { pass: [409], ...(signal ? { signal } : {}) },
      );
    } catch (err) {
      // An abort may land after the service made it: it goes (by its name).
      if (signal?.aborted) {
        await this.deleteService(name).catch(() => undefined);
        throw aborted(signal);
      }
      if (statusOf(err) !== 409) throw err;
      // 409: an earlier send of this create (its answer lost) made it. Ours only when marked so.
      const svc = await this.api.call(`read service ${name}`, () => this.api.client.get.service({ parameters: { ...this.api.project, serviceId: name } }));
      if (!svc.data.description?.startsWith(EPHEMERAL_MARKER)) {
        throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `northflank: a service named ${name} exists and was not created by sandqueue`, { retryable: false });
      }
    }
    try {
      const instance = await this.firstRunningInstance(name, imagePath, spec.image, signal);
      if (signal?.aborted) throw aborted(signal);
      return new NorthflankSandbox(this, name, instance, true);
    } catch (err) {
      await this.deleteService(name).catch(() => undefined);
      if (signal?.aborted) throw aborted(signal);
      throw err;
    }
  }

  /** Polls the service's containers until one runs; a deployment that fails first is a bad image. */
  private async firstRunningInstance(serviceId: string, imagePath: string, image: string, signal?: AbortSignal): Promise<string> {
    const until = performance.now() + this.opts.createTimeoutMs;
    for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
      const running = await this.runningInstances(serviceId, signal);
      if (running.length > 0) return running[0]!;
      const svc = await this.api.call(`read service ${serviceId}`, () => this.api.client.get.service({ parameters: { ...this.api.project, serviceId } }), signal ? { signal } : {});
      if (svc.data.status?.deployment?.status === "FAILED") {
        throw new ProviderError(
          ErrorCodes.IMAGE_NOT_FOUND,
          `northflank: the deployment of image "${imagePath}" (job image "${image}") failed before any instance ran: no such image, or not pullable (SANDQUEUE_NORTHFLANK_IMAGES maps job images to image paths)`,
          { retryable: false },
        );
      }
      if (performance.now() > until) {
        throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `northflank: service ${serviceId} has no running instance after ${this.opts.createTimeoutMs} ms`, { retryable: true });
      }
      await sleep(delay, undefined, signal ? { signal } : {}).catch(() => undefined);
      if (signal?.aborted) throw aborted(signal);
    }
  }

  async runningInstances(serviceId: string, signal?: AbortSignal): Promise<string[]> {
    const r = await this.api.call(`list containers of ${serviceId}`, () => this.api.client.get.service.containers({ parameters: { ...this.api.project, serviceId } }), signal ? { signal } : {});
    return (r.data.containers ?? []).filter((c) => c.status === "TASK_RUNNING").map((c) => c.name);
  }

  /** Whether an instance still runs (false when it or its service is gone). */
  async instanceRunning(serviceId: string, instance: string): Promise<boolean> {
    try {
      const r = await this.api.call(`list containers of ${serviceId}`, () => this.api.client.get.service.containers({ parameters: { ...this.api.project, serviceId } }), { pass: [404] });
      return (r.data.containers ?? []).some((c) => c.name === instance && c.status === "TASK_RUNNING");
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw err;
    }
  }

  /**
   * Deletes a service sandqueue created (404 counts as done). Anything else
   * is refused before a request: the attached service, and any name that is
   * not one of our sandbox names.
   */
  async deleteService(serviceId: string): Promise<void> {
    if (serviceId === this.opts.serviceId || ownerTagOf(NAME_PREFIX, serviceId) === null) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `northflank: refusing to delete service ${serviceId}: sandqueue did not create it`, { retryable: false });
    }
    try {
      await this.api.call(`delete service ${serviceId}`, () => this.api.client.delete.service({ parameters: { ...this.api.project, serviceId } }), { pass: [404] });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
  }

  // ---- attach ---------------------------------------------------------------

  /**
   * An attached service runs one image: a job may ask for it (by its image
   * path or a name SANDQUEUE_NORTHFLANK_IMAGES maps to it), and for nothing
   * else. A service not deployed from an external image takes any job image.
   */
  private async checkAttachedImage(serviceId: string, image: string, signal?: AbortSignal): Promise<void> {
    if (!this.attachedImage || this.attachedImage.at < performance.now() - ATTACHED_IMAGE_TTL_MS) {
      const svc = await this.api.call(`read attached service ${serviceId}`, () => this.api.client.get.service({ parameters: { ...this.api.project, serviceId } }), {
        ...(signal ? { signal } : {}),
        notFound: () => new ProviderError(ErrorCodes.PROVIDER_FAILED, `northflank: attached service ${serviceId} not found in project ${this.opts.projectId}`, { retryable: false }),
      });
      this.attachedImage = { path: svc.data.deployment?.external?.imagePath, at: performance.now() };
    }
    const runs = this.attachedImage.path;
    const asked = this.opts.images[image] ?? image;
    if (runs !== undefined && asked !== runs) {
      throw new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, `northflank: attached service ${serviceId} runs image "${runs}"; the job asks for "${image}" ("${asked}")`, { retryable: false });
    }
  }

  private async attach(spec: SandboxSpec, signal?: AbortSignal): Promise<NorthflankSandbox> {
    const serviceId = this.opts.serviceId!;
    await this.checkAttachedImage(serviceId, spec.image, signal);
    const started = performance.now();
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const instances = await this.runningInstances(serviceId, signal);
      // A random start spreads concurrent acquires over the instances.
      const offset = Math.floor(Math.random() * Math.max(1, instances.length));
      for (const instance of [...instances.slice(offset), ...instances.slice(0, offset)]) {
        const lease = await this.leases.take(
          {
            worker: this.ownerLabel,
            ...(spec.labels[LABEL_JOB] ? { job: spec.labels[LABEL_JOB] } : {}),
            service: serviceId,
            instance,
            expiresAt: Date.now() + spec.maxLifetimeMs + LEASE_GRACE_MS,
          },
          signal,
        );
        if (!lease) continue;
        try {
          // Whatever a holder that died left is gone before the job starts.
          await this.cleanInstance(serviceId, instance, signal);
          if (signal?.aborted) throw aborted(signal);
        } catch (err) {
          await this.leases.drop(lease.id).catch(() => undefined);
          throw signal?.aborted ? aborted(signal) : err;
        }
        return new NorthflankSandbox(this, serviceId, instance, false, lease);
      }
      const waited = Math.round(performance.now() - started);
      if (waited > this.opts.createTimeoutMs) throw instancesBusy(serviceId, instances.length, waited);
      await sleep(delay, undefined, signal ? { signal } : {}).catch(() => undefined);
      if (signal?.aborted) throw aborted(signal);
    }
  }

  private async cleanInstance(serviceId: string, instance: string, signal?: AbortSignal): Promise<void> {
    const r = await this.api.session(serviceId, instance, ["/bin/sh", "-c", CLEAN_INSTANCE], { timeoutMs: CLEAN_TIMEOUT_MS, ...(signal ? { signal } : {}) });
    if (r.exitCode !== 0) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `northflank: cannot clean ${serviceId}/${instance} (its job processes, /workspace) (exit ${r.exitCode}): ${r.stderr.toString().trim().slice(0, 300)}`, {
        retryable: true,
      });
    }
  }

  /** Release of an attached instance: emptied (best effort: a gone instance has nothing left), then freed. */
  async returnInstance(box: NorthflankSandbox): Promise<void> {
    await this.cleanInstance(box.serviceId, box.instance).catch(() => undefined);
    if (box.lease) await this.leases.drop(box.lease.id);
  }

  forget(box: NorthflankSandbox): void {
    this.live.delete(box);
  }

  // ---- readiness, reaping, close ----------------------------------------------

  async check(): Promise<void> {
    const serviceId = this.opts.serviceId;
    if (this.opts.mode === "attach" && serviceId) {
      await this.api.call(`read attached service ${serviceId}`, () => this.api.client.get.service({ parameters: { ...this.api.project, serviceId } }), {
        signal: AbortSignal.timeout(15_000),
        notFound: () => new ProviderError(ErrorCodes.PROVIDER_FAILED, `northflank: attached service ${serviceId} not found in project ${this.opts.projectId}`, { retryable: false }),
      });
      return;
    }
    await this.api.call("list services (readiness)", () => this.api.client.list.services({ parameters: this.api.project, options: { per_page: 1 } }), { signal: AbortSignal.timeout(15_000) });
  }

  /**
   * Removes what workers without a heartbeat left: ephemeral services (found
   * through the SDK's list call by their name and description; never the
   * attached service, never a service without our marker) and leases of
   * attached instances (the instance's workspace emptied, then the lease
   * dropped; the service itself untouched). This worker's own are skipped.
   */
  async reap(owners?: OwnerLiveness): Promise<number> {
    if (!owners) return 0;
    const listed = await this.api.call("list services (reaper)", () => this.api.client.list.services.all({ parameters: this.api.project }));
    const ours = (listed.data?.services ?? []).filter((s) => s.id !== this.opts.serviceId && s.description?.startsWith(EPHEMERAL_MARKER)).map((s) => s.id);
    const reaped = await removeEach(await namesOfDeadOwners(NAME_PREFIX, this.ownTag, ours, owners), (id) => this.deleteService(id));
    const leases = (await this.leases.list()).filter((l) => l.record.worker !== this.ownerLabel);
    if (leases.length === 0) return reaped;
    const alive = await owners.liveOwners([...new Set(leases.map((l) => l.record.worker))]);
    const doomed = leases.filter((l) => !alive.has(l.record.worker) || l.record.expiresAt <= Date.now());
    return (
      reaped +
      (await removeEach(doomed, async (l) => {
        await this.cleanInstance(l.record.service, l.record.instance).catch(() => undefined);
        await this.leases.drop(l.id);
      }))
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.live].map((b) => b.release()));
  }
}
