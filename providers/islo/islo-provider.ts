/**
 * The islo provider: one islo sandbox per job, through islo's documented
 * REST API (no official npm SDK exists; this speaks HTTP with Node's fetch
 * through providers/remote/http-client.ts). See docs/PROVIDERS.md ("islo").
 */
import { throwIfAcquireAborted } from "../abort.js";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";
import type { ArchiveLimits } from "../archive/index.js";
import { DEFAULT_ARCHIVE_LIMITS } from "../archive/index.js";
import {
  LABEL_JOB,
  LABEL_WORKER,
  labelSafe,
  type OwnerLiveness,
  type ProviderCapabilities,
  type Sandbox,
  type SandboxProvider,
  type SandboxSpec,
} from "../provider.js";
import { IsloApi, errorCode, type IsloProfile, type IsloSandbox as IsloSandboxBody } from "./api.js";
import { profilePlan, type EgressPolicyLike } from "./gateway.js";
import { IsloSandbox, BROKEN } from "./islo-sandbox.js";
import { NAME_PREFIX, ownerOf, sandboxName } from "./names.js";
import { isloCapabilities } from "./capabilities.js";

export interface IsloProviderOptions {
  controlUrl: string;
  computeUrl: string;
  apiKey: string;
  /** This worker's id (owner of its sandboxes). */
  owner: string;
  /** Per HTTP attempt, ms. */
  timeoutMs: number;
  /** Further attempts after a 5xx or a timeout. */
  retries: number;
  /** First retry backoff, ms (doubling). Default 200. */
  backoffMs?: number;
  /** Longest interval between polls of an exec or a starting sandbox, ms. */
  pollMs: number;
  /** Longest wait for a sandbox to be running after create or resume, ms. */
  readyTimeoutMs: number;
  /** Job image name -> islo image; unmapped names are sent as they are. */
  images?: Record<string, string>;
  /** A gateway profile named by the operator, used for sandboxes without a job policy and never changed. */
  gatewayProfile?: string;
  vcpus?: number;
  diskGb?: number;
  archiveLimits?: ArchiveLimits;
}

export interface IsloAcquireOptions {
  signal?: AbortSignal;
  /** A policy for a sandbox that serves no job (tools, tests); a job's comes as `SandboxSpec.egressPolicy`. */
  egressPolicy?: EgressPolicyLike;
}

export class IsloProvider implements SandboxProvider {
  readonly name = "islo";
  readonly capabilities: ProviderCapabilities = isloCapabilities;
  readonly api: IsloApi;
  private readonly workerLabel: string;
  private readonly live = new Set<IsloSandbox>();
  /** Our sandboxes (and their profiles) whose delete failed: retried by every reap until it goes through. */
  private readonly leftOvers = new Map<string, string | null>();
  private closed = false;

  constructor(private readonly o: IsloProviderOptions) {
    this.api = new IsloApi({
      controlUrl: o.controlUrl,
      computeUrl: o.computeUrl,
      apiKey: o.apiKey,
      timeoutMs: o.timeoutMs,
      retries: o.retries,
      ...(o.backoffMs ? { backoffMs: o.backoffMs } : {}),
    });
    this.workerLabel = labelSafe(o.owner);
  }

  async acquire(spec: SandboxSpec, opts: IsloAcquireOptions = {}): Promise<Sandbox> {
    const { signal } = opts;
    if (this.closed) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "islo provider is closed", { retryable: true });
    const policy = spec.egressPolicy ?? opts.egressPolicy;
    if (spec.network === "proxy" && !policy) {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "network: the islo provider cannot reach the worker's egress proxy; it needs the job's policy for islo's gateway", {
        retryable: false,
      });
    }
    const name = sandboxName(spec.labels[LABEL_WORKER] ?? this.workerLabel, spec.labels[LABEL_JOB], spec.attempt);
    // Checked before anything is created: a policy islo cannot express is refused whole.
    const plan = policy ? profilePlan(name, this.workerLabel, policy) : null;
    throwIfAcquireAborted(signal, "islo");
    let profileId: string | null = null;
    // Once a create was sent, the sandbox may exist even if no answer said so.
    let sent = false;
    try {
      if (plan) {
        profileId = await this.createProfile(plan, signal);
        throwIfAcquireAborted(signal, "islo");
      }
      const gateway = profileId ?? this.o.gatewayProfile;
      const image = this.o.images?.[spec.image] ?? spec.image;
      const body = {
        name,
        image,
        workdir: "/workspace",
        memory_mb: spec.limits.memoryMb,
        ...(this.o.vcpus ? { vcpus: this.o.vcpus } : {}),
        ...(this.o.diskGb ? { disk_gb: this.o.diskGb } : {}),
        // No route out unless a job policy's gateway allows it.
        internet_enabled: plan ? plan.profile.internet_enabled : false,
        ...(gateway ? { gateway_profile: gateway } : {}),
        // islo's own backstop: the sandbox goes even when no worker is left to delete it.
        lifecycle: { delete_after: Math.ceil(spec.maxLifetimeMs / 1000) },
      };
      const shown = image === spec.image ? `'${image}'` : `'${image}' (job image '${spec.image}')`;
      sent = true;
      const status = await this.createSandbox(name, body, shown, signal);
      const box = new IsloSandbox({
        api: this.api,
        name,
        profileId,
        egressEnforced: plan !== null,
        pollMs: this.o.pollMs,
        readyTimeoutMs: this.o.readyTimeoutMs,
        archiveLimits: this.o.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS,
        onReleased: (leftOver) => {
          this.live.delete(box);
          if (leftOver) this.leftOvers.set(name, profileId);
        },
      });
      this.live.add(box);
      // Created running (as islo's create usually answers): no extra round trip.
      if (status !== "running" && status !== "started") await box.waitRunning();
      if (signal?.aborted) {
        await box.release();
        throwIfAcquireAborted(signal, "islo");
      }
      return box;
    } catch (err) {
      // Refused credentials: nothing was created, and no delete would be accepted either.
      if (isSandqueueError(err) && err.code === ErrorCodes.PROVIDER_CREDENTIALS) sent = false;
      // Nothing half-made stays behind (our name: deleting it is safe; 404 is fine); what cannot be deleted now is retried by reap.
      const undo = async (): Promise<void> => {
        if (sent) await this.api.deleteSandbox(name);
        if (profileId) await this.api.deleteProfile(profileId);
      };
      await undo().catch(() => this.leftOvers.set(name, profileId));
      // A create still on its way (aborted, timed out) may land after our delete: the next reap looks again.
      if (sent && !this.leftOvers.has(name)) this.leftOvers.set(name, null);
      throw err;
    }
  }

  /**
   * POST /sandboxes under our name. A 409 for that name means an earlier try
   * of this same create went through: that sandbox is ours, adopted as it is
   * (resumed when paused or stopped; deleted and made again when broken),
   * never a second create while the name exists.
   */
  /** Creates (or adopts) the sandbox; answers the status it was last seen in. */
  private async createSandbox(name: string, body: Record<string, unknown>, shownImage: string, signal?: AbortSignal): Promise<string> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await this.api.call("compute", { method: "POST", path: "/sandboxes", json: body, accept: [400, 409], op: `create sandbox ${name}`, ...(signal ? { signal } : {}) });
      if (res.status < 300) return res.json<IsloSandboxBody>().status;
      const code = errorCode(res);
      if (res.status === 400) {
        const text = res.text();
        if (code === "SANDBOX_PROVISIONING_FAILED" && /image/i.test(text)) {
          throw new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, `islo: image ${shownImage} not found (${text.slice(0, 200)})`, { retryable: false });
        }
        throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `islo: create sandbox ${name}: HTTP 400: ${text.slice(0, 300)}`, { retryable: false });
      }
      // 409: the name exists, and only we ever use it.
      const got = await this.api.getSandbox(name, signal);
      if (got.status === 404) continue; // deleted meanwhile: create it (once more)
      const status = got.json<IsloSandboxBody>().status;
      if (status === "paused" || status === "stopped") {
        await this.api.transition(name, "resume", signal);
        return "resuming";
      }
      if (BROKEN.has(status)) {
        await this.api.deleteSandbox(name, signal);
        continue;
      }
      return status;
    }
    throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `islo: create sandbox ${name}: the name stayed taken`, { retryable: true });
  }

  private async createProfile(plan: ReturnType<typeof profilePlan>, signal?: AbortSignal): Promise<string> {
    const s = signal ? { signal } : {};
    const res = await this.api.call("control", { method: "POST", path: "/gateway/profiles", json: plan.profile, accept: [409], op: `create gateway profile ${plan.profile.name}`, ...s });
    let profile: IsloProfile;
    if (res.status === 409) {
      // Our own name (an earlier try went through): found in the list and reused as it is, rules redone.
      const found = (await this.api.listProfiles(signal)).find((p) => p.name === plan.profile.name);
      if (!found) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `islo: gateway profile ${plan.profile.name} exists but is not listed`, { retryable: true });
      await this.api.deleteProfile(found.id, signal);
      return this.createProfile(plan, signal);
    }
    profile = res.json<IsloProfile>();
    try {
      for (const rule of plan.rules) {
        await this.api.call("control", {
          method: "POST",
          path: `/gateway/profiles/${encodeURIComponent(profile.id)}/rules`,
          json: rule,
          op: `add rule ${rule.host_pattern} to gateway profile ${plan.profile.name}`,
          // A repeated rule would change nothing a first match decides, but keep the list exact.
          idempotent: false,
          ...s,
        });
      }
    } catch (err) {
      await this.api.deleteProfile(profile.id).catch(() => undefined);
      throw err;
    }
    return profile.id;
  }

  async check(): Promise<void> {
    await this.api.call("compute", { method: "GET", path: "/sandboxes", query: { limit: 1 }, op: "list sandboxes (readiness)" });
  }

  /**
   * Deletes sandboxes (and their job profiles) of workers whose heartbeat is
   * gone, found through islo's list call by our name prefix, after retrying
   * our own releases that failed. Our own live ones are never touched;
   * without heartbeats to ask, no one else's are.
   */
  async reap(owners?: OwnerLiveness): Promise<number> {
    let n = 0;
    for (const [name, profileId] of this.leftOvers) {
      try {
        const res = await this.api.deleteSandbox(name);
        if (profileId) await this.api.deleteProfile(profileId);
        this.leftOvers.delete(name);
        if (res.status < 300) n++;
      } catch (err) {
        if (!isSandqueueError(err)) throw err;
      }
    }
    if (!owners) return n;
    const sandboxes = await this.api.listSandboxes(NAME_PREFIX);
    const profiles = await this.api.listProfiles();
    const others = (name: string) => {
      const o = ownerOf(name);
      return o !== null && o !== this.workerLabel ? o : null;
    };
    const labels = [...new Set([...sandboxes.map((s) => others(s.name)), ...profiles.map((p) => others(p.name))].filter((o): o is string => o !== null))];
    if (labels.length === 0) return n;
    const live = await owners.liveOwners(labels);
    for (const sb of sandboxes) {
      const o = others(sb.name);
      if (o === null || live.has(o)) continue;
      await this.api.deleteSandbox(sb.name);
      n++;
    }
    for (const p of profiles) {
      const o = others(p.name);
      if (o === null || live.has(o)) continue;
      await this.api.deleteProfile(p.id).catch((err: unknown) => {
        // Still used by a sandbox we could not delete: the next reap tries again.
        if (!isSandqueueError(err)) throw err;
      });
    }
    return n;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.live].map((s) => s.release()));
  }
}
