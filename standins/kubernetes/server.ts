/**
 * KubernetesStandin: an HTTP server on 127.0.0.1 that answers the part of
 * the Kubernetes API a pod provider uses (see standins/README.md), with each
 * pod run as a real local sandbox. Plain HTTP with a bearer token (from the
 * kubeconfig it writes) over HTTPS with a self-signed certificate (its CA
 * in the kubeconfig: kubectl sends tokens over TLS only); exec upgrades to
 * WebSocket on the same port.
 */
import http, { STATUS_CODES, type IncomingMessage } from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { randomBytes } from "node:crypto";
import type { SandboxProvider } from "../../providers/provider.js";
import { ObjectStore } from "./store.js";
import { Kubelet } from "./kubelet.js";
import { FaultTable } from "./faults.js";
import { KubernetesApi, type RequestLogEntry } from "./api.js";
import { ExecServer, V4, V5, execTarget, negotiate } from "./exec.js";
import { handleAdmin } from "./admin.js";
import { podType, type Pod } from "./pods.js";
import { networkPolicyType } from "./networkpolicies.js";
import { BUILTIN_NAMESPACES, namespaceObject, namespaceType } from "./namespaces.js";
import { badRequest, isStatus, type Status } from "./status.js";
import { kubeconfigYaml, writeKubeconfig } from "./kubeconfig.js";
import { selfSignedCertificate } from "./tls-cert.js";
import type { ResourceType } from "./resource-type.js";
import { ConfigError, ErrorCodes } from "../../errors/index.js";

export interface StandinOptions {
  /** Runs the pods. The stand-in never closes it: its owner does, after stop(). */
  provider: SandboxProvider & { resources?: () => Promise<string[]> };
  host?: string;
  /** 0 (default): any free port. */
  port?: number;
  /** Bearer token clients must send; default a random one; null: no authentication. */
  token?: string | null;
  /** HTTPS with a fresh self-signed certificate (default), or plain HTTP (kubectl then sends no token). */
  tls?: boolean;
  /** Namespaces to have besides default, kube-system, kube-public and kube-node-lease. */
  namespaces?: string[];
  /** Container image -> local image. */
  images?: Record<string, string>;
  /** Local image for unmapped images (default `host`); null: they fail with ErrImagePull. */
  defaultImage?: string | null;
  /** Memory of pods without limits.memory on every container, MiB. Default 512. */
  defaultMemoryMb?: number;
  /** pids limit of every pod. Default 256. */
  podPidsLimit?: number;
  /** Output kept per stream and exec before the command is killed. Default 64 MiB. */
  maxOutputBytes?: number;
  /** Exec subprotocols served, preferred first. Default v5, v4. */
  execProtocols?: string[];
  /** v4 exec: the command starts once stdin has been quiet this long. Default 200 ms. */
  v4StdinIdleMs?: number;
  /** Stdin held for one exec. Default 256 MiB. */
  maxStdinBytes?: number;
}

const REQUEST_LOG_SIZE = 2000;
const MiB = 1024 * 1024;

export class KubernetesStandin {
  readonly faults = new FaultTable();
  readonly token: string | null;
  private readonly store = new ObjectStore();
  private readonly kubelet: Kubelet;
  private readonly api: KubernetesApi;
  private readonly exec: ExecServer;
  private readonly server: http.Server | https.Server;
  /** The server certificate, its own CA; null over plain HTTP. */
  readonly caPem: string | null;
  private readonly sockets = new Set<Socket>();
  private readonly log: RequestLogEntry[] = [];
  private readonly types: ResourceType[] = [podType, namespaceType, networkPolicyType];
  private readonly execProtocols: string[];
  private address = "";
  private stopping: Promise<void> | null = null;

  private constructor(private readonly opts: StandinOptions) {
    this.token = opts.token === undefined ? randomBytes(24).toString("hex") : opts.token;
    for (const protocol of opts.execProtocols ?? []) {
      if (protocol !== V5 && protocol !== V4) {
        throw new ConfigError(ErrorCodes.CONFIG_INVALID, `exec protocol '${protocol}' is not served by the stand-in (${V5}, ${V4})`);
      }
    }
    this.execProtocols = opts.execProtocols ?? [V5, V4];
    this.kubelet = new Kubelet(this.store, {
      provider: opts.provider,
      nodeName: "standin-node",
      nodeIP: "127.0.0.1",
      images: opts.images ?? {},
      defaultImage: opts.defaultImage === undefined ? "host" : opts.defaultImage,
      defaultMemoryMb: opts.defaultMemoryMb ?? 512,
      podPidsLimit: opts.podPidsLimit ?? 256,
      maxOutputBytes: opts.maxOutputBytes ?? 64 * MiB,
    });
    this.api = new KubernetesApi({
      store: this.store,
      kubelet: this.kubelet,
      faults: this.faults,
      types: this.types,
      token: this.token,
      serverAddress: () => this.address,
      onRequest: (e) => this.record(e),
    });
    this.exec = new ExecServer(this.kubelet, this.faults, {
      protocols: this.execProtocols,
      v4StdinIdleMs: opts.v4StdinIdleMs ?? 200,
      maxStdinBytes: opts.maxStdinBytes ?? 256 * MiB,
    });
    for (const ns of new Set([...BUILTIN_NAMESPACES, ...(opts.namespaces ?? [])])) {
      const prepared = namespaceType.prepareCreate(namespaceObject(ns));
      if (isStatus(prepared)) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `namespace '${ns}': ${prepared.message}`);
      this.store.create("namespaces", prepared);
    }
    const handler = (req: IncomingMessage, res: http.ServerResponse) => {
      const url = new URL(req.url ?? "/", "http://standin");
      if (url.pathname.startsWith("/standin/")) {
        if (!this.api.authorized(req)) {
          res.writeHead(401).end();
          return;
        }
        void handleAdmin(
          {
            faults: this.faults,
            requests: () => [...this.log],
            vanish: (ns, name) => this.kubelet.vanish(ns, name),
            sandboxes: async () => ({ running: this.kubelet.sandboxes(), leftovers: (await opts.provider.resources?.()) ?? null }),
          },
          req,
          res,
          url,
        ).catch(() => res.destroy());
        return;
      }
      void this.api.handle(req, res);
    };
    if (opts.tls === false) {
      this.caPem = null;
      this.server = http.createServer(handler);
    } else {
      const { certPem, keyPem } = selfSignedCertificate("sandqueue-standin", ["127.0.0.1"], ["localhost"]);
      this.caPem = certPem;
      this.server = https.createServer({ cert: certPem, key: keyPem }, handler);
    }
    this.server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.onUpgrade(req, socket, head));
    // Over TLS, "connection" sees the raw TCP sockets: destroying those at stop() ends every stream.
    this.server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
  }

  static async start(opts: StandinOptions): Promise<KubernetesStandin> {
    const standin = new KubernetesStandin(opts);
    await new Promise<void>((resolve, reject) => {
      standin.server.once("error", reject);
      standin.server.listen(opts.port ?? 0, opts.host ?? "127.0.0.1", () => resolve());
    });
    const addr = standin.server.address();
    if (addr === null || typeof addr === "string") throw new Error("the stand-in's server has no TCP address");
    standin.address = `${addr.address}:${addr.port}`;
    return standin;
  }

  get url(): string {
    return `${this.caPem === null ? "http" : "https"}://${this.address}`;
  }

  kubeconfig(namespace = "default"): string {
    return kubeconfigYaml(this.url, this.token, namespace, this.caPem);
  }

  async writeKubeconfig(file: string, namespace = "default"): Promise<void> {
    await writeKubeconfig(file, this.kubeconfig(namespace));
  }

  /** The last requests served, oldest first. */
  requests(): RequestLogEntry[] {
    return [...this.log];
  }

  /** Removes a pod at once, as if it vanished under its clients (exec connections drop without a status). */
  vanish(namespace: string, name: string): boolean {
    return this.kubelet.vanish(namespace, name);
  }

  /** Pods whose sandbox is up. */
  sandboxes(): Array<{ namespace: string; name: string; sandbox: string }> {
    return this.kubelet.sandboxes();
  }

  /** Resolves once every pod start, stop and sandbox release begun so far has finished. */
  settled(): Promise<void> {
    return this.kubelet.settled();
  }

  get pods(): Pod[] {
    return this.store.list("pods") as Pod[];
  }

  private record(e: RequestLogEntry): void {
    this.log.push(e);
    if (this.log.length > REQUEST_LOG_SIZE) this.log.shift();
  }

  private async onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const entry = (code: number): RequestLogEntry => ({
      method: req.method ?? "GET",
      path: url.pathname + url.search,
      verb: "exec",
      resource: "pods",
      code,
      ...(req.headers["user-agent"] ? { userAgent: req.headers["user-agent"] } : {}),
    });
    const refuse = (status: Status) => {
      this.record(entry(status.code));
      const body = JSON.stringify(status);
      socket.end(
        `HTTP/1.1 ${status.code} ${STATUS_CODES[status.code] ?? ""}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    try {
      const admitted = await this.api.admit(req, url);
      if (isStatus(admitted)) return refuse(admitted);
      const { route } = admitted;
      if (route.kind !== "resource" || route.subresource !== "exec" || route.type.kind !== "Pod" || !route.name) {
        return refuse(badRequest("only pods/exec can be upgraded"));
      }
      const ns = route.namespace ?? "";
      const pod = this.store.get("pods", ns, route.name) as Pod | undefined;
      const target = execTarget(pod, route.name, url.searchParams, this.kubelet.isRunning(ns, route.name));
      if (isStatus(target)) return refuse(target);
      if ((req.headers.upgrade ?? "").toLowerCase() !== "websocket") {
        return refuse(badRequest(`the stand-in serves exec over WebSocket (${this.execProtocols.join(", ")}) only, not ${req.headers.upgrade ?? "a plain request"}`));
      }
      const offered = req.headers["sec-websocket-protocol"];
      const protocol = negotiate(offered, this.execProtocols);
      if (!protocol) {
        return refuse(badRequest(`requested protocol(s) are not supported: [${offered ?? ""}]; supports [${this.execProtocols.join(" ")}]`));
      }
      this.record(entry(101));
      this.exec.upgrade(req, socket, head, target, protocol);
    } catch {
      socket.destroy();
    }
  }

  /** Stops serving, drops every connection and releases every pod's sandbox. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.exec.closeAll();
      for (const s of this.sockets) s.destroy();
      await closed;
      await this.kubelet.close();
    })();
    return this.stopping;
  }
}
