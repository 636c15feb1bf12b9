/**
 * Assembles a worker process: provider, secret store, snapshot store,
 * metrics/health server and the queue worker. Start-up that fails half-way
 * releases what it already took (a last-in-first-out stack of releasers).
 */
import { Registry } from "prom-client";
import type { SandboxProvider } from "../providers/provider.js";
import type { WorkerConfig } from "./config.js";
import type { Logger } from "./log.js";
import { filesToTar } from "../providers/archive/index.js";
import { createProvider } from "./provider-factory.js";
import { startHealthServer } from "./health-server.js";
import { WorkerMetrics } from "./metrics.js";
import { maskSecrets, openSecretStore } from "./secrets/index.js";
import { openSnapshotStore, workspaceStoreFor } from "./snapshot/index.js";
import { SandqueueWorker, type WorkerDeps } from "./worker.js";
import { EgressGateway } from "./egress/gateway.js";

export interface WorkerRuntime {
  worker: SandqueueWorker;
  provider: SandboxProvider;
  /** Graceful, two-phase; idempotent. */
  close(graceMs?: number): Promise<void>;
}

export async function startWorkerRuntime(
  config: WorkerConfig,
  log: Logger,
  opts: { provider?: SandboxProvider } = {},
): Promise<WorkerRuntime> {
  const releasers: (() => Promise<unknown>)[] = [];
  const unwind = async (): Promise<void> => {
    for (const release of releasers.splice(0).reverse()) {
      try {
        await release();
      } catch (err) {
        log.log("warn", "runtime.release_failed", { error: String(err) });
      }
    }
  };
  try {
    const provider = opts.provider ?? (await createProvider(config));
    if (!opts.provider) releasers.push(() => provider.close());
    await provider.check();

    const egress = startEgress(config, provider, releasers, log);
    const deps: WorkerDeps = { provider, log, egress, ...(await workspaceDeps(config, releasers, log)) };
    const worker = new SandqueueWorker(config, deps);
    await worker.start();
    // Popped after the metrics server below if its start-up fails (a no-op after close()).
    releasers.push(() => worker.close());
    if (config.metricsPort > 0) {
      // Readiness follows worker.state (false from the start of draining); the
      // server itself closes last, after the worker has drained.
      const metrics = new WorkerMetrics({
        registry: new Registry(),
        worker,
        provider: provider.name,
        readySandboxes: provider.readySandboxes?.bind(provider),
        egress,
      });
      releasers.push(() => metrics.close());
      const server = await startHealthServer({
        host: config.metricsHost,
        port: config.metricsPort,
        registry: metrics.registry,
        worker,
        provider,
        onProviderCheckFailed: () => metrics.recordProviderError("check"),
      });
      releasers.push(() => server.close());
      log.log("info", "worker.metrics_listening", { url: server.url });
    }
    // Closing the worker comes before closing the provider (pushed earlier).
    let closing: Promise<void> | undefined;
    const close = (graceMs?: number): Promise<void> =>
      (closing ??= (async () => {
        await worker.close(graceMs);
        await unwind();
      })());
    return { worker, provider, close };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/**
 * The egress proxy, for providers that can route a sandbox to it: one per
 * worker, with its own CA; each request is an audit line (egress.request).
 */
function startEgress(config: WorkerConfig, provider: SandboxProvider, releasers: (() => Promise<unknown>)[], log: Logger): EgressGateway | undefined {
  if (!provider.capabilities.networkPolicy) return undefined;
  const gateway = new EgressGateway(config.egress);
  if (config.logJobs) gateway.on("request", (e) => log.log("info", "egress.request", { ...e, ms: Math.round(e.ms * 1000) / 1000 }));
  releasers.push(() => gateway.close());
  return gateway;
}

/** Secrets, the snapshot store and inline files, as the pipeline uses them. */
async function workspaceDeps(config: WorkerConfig, releasers: (() => Promise<unknown>)[], log: Logger): Promise<Partial<WorkerDeps>> {
  const store = openSnapshotStore(config.snapshotsUrl);
  releasers.push(() => store.close());
  const retention = config.snapshotRetentionMs;
  if (retention !== undefined) {
    // Every worker may prune: removal is idempotent and content-addressed ids never change meaning.
    const prune = (): void =>
      void store.prune(retention).then(
        (n) => n && log.log("info", "snapshots.pruned", { removed: n }),
        (err: unknown) => log.log("warn", "snapshots.prune_failed", { error: String(err) }),
      );
    prune();
    const timer = setInterval(prune, 3_600_000).unref();
    releasers.push(async () => clearInterval(timer));
  }
  return {
    secrets: openSecretStore({ env: process.env, dir: config.secretsDir }),
    workspace: workspaceStoreFor(store),
    filesToTar,
    mask: maskSecrets,
  };
}
