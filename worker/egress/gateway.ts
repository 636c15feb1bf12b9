/**
 * What the pipeline sees of egress: one gateway per worker (the proxy and
 * its CA), opened per job on the sandbox's egress directory. Opening writes
 * the CA bundle the job's clients trust (the system's roots plus the
 * worker's CA), starts serving the job's socket, and hands back the
 * environment that points the job's clients at both.
 */
import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { rootCertificates } from "node:tls";
import { EventEmitter } from "node:events";
import type { NetworkPolicy } from "../../producer/network-policy.js";
import { EGRESS_SOCKET, type SandboxEgress } from "../../providers/provider.js";
import { CertificateAuthority } from "./certificate-authority.js";
import type { EgressConfig } from "./config.js";
import { EgressProxy, type EgressEvent, type JobEgress } from "./proxy.js";

/** The CA bundle's name in the sandbox's egress directory. */
export const SANDBOX_CA_BUNDLE = "ca.pem";

/** Hosts the job's clients reach without the proxy: its own loopback (nothing else is there). */
const NO_PROXY = "localhost,127.0.0.1,::1";

/** Debian's bundle of the system roots (ca-certificates); Node's own copy of Mozilla's roots otherwise. */
const SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt";

export interface EgressJobSession {
  /** Variables naming the CA bundle; a job's own `env` may override them. */
  readonly caEnv: Record<string, string>;
  /** The proxy variables; set after the job's `env`, so every client is pointed at the proxy. */
  readonly proxyEnv: Record<string, string>;
  close(): Promise<void>;
}

export interface EgressOpenRequest {
  jobId: string;
  policy: NetworkPolicy;
  boundSecrets: Readonly<Record<string, string>>;
  sandbox: SandboxEgress;
}

export class EgressGateway extends EventEmitter<{ request: [EgressEvent] }> {
  readonly proxy: EgressProxy;
  readonly ca: CertificateAuthority;
  private readonly bundle: string;

  constructor(config: EgressConfig, opts: { ca?: CertificateAuthority; systemBundle?: string } = {}) {
    super();
    this.ca = opts.ca ?? new CertificateAuthority();
    const upstreamCa = config.upstreamCaFile ? readFileSync(config.upstreamCaFile, "utf8") : undefined;
    this.proxy = new EgressProxy({ config, ca: this.ca, upstreamCa, onEvent: (e) => this.emit("request", e) });
    const system = opts.systemBundle ?? (existsSync(SYSTEM_BUNDLE) ? readFileSync(SYSTEM_BUNDLE, "utf8") : rootCertificates.join("\n"));
    this.bundle = `${system.trimEnd()}\n${this.ca.certPem}`;
  }

  async open(req: EgressOpenRequest): Promise<EgressJobSession> {
    const { sandbox } = req;
    await writeFile(path.join(sandbox.hostDir, SANDBOX_CA_BUNDLE), this.bundle, { mode: 0o644 });
    const session: JobEgress = await this.proxy.open({
      jobId: req.jobId,
      policy: req.policy,
      boundSecrets: req.boundSecrets,
      socketPath: path.join(sandbox.hostDir, EGRESS_SOCKET),
    });
    return { caEnv: caEnv(sandbox), proxyEnv: proxyEnv(sandbox), close: () => session.close() };
  }

  close(): Promise<void> {
    return this.proxy.close();
  }
}

/** What pip, requests, curl, git, Node and OpenSSL-based clients read to trust the bundle. */
export function caEnv(sandbox: SandboxEgress): Record<string, string> {
  const bundle = path.posix.join(sandbox.sandboxDir, SANDBOX_CA_BUNDLE);
  return {
    SSL_CERT_FILE: bundle,
    REQUESTS_CA_BUNDLE: bundle,
    NODE_EXTRA_CA_CERTS: bundle,
    PIP_CERT: bundle,
    CURL_CA_BUNDLE: bundle,
    GIT_SSL_CAINFO: bundle,
  };
}

/** The standard proxy variables, both spellings: clients that honour them need no other change. */
export function proxyEnv(sandbox: SandboxEgress): Record<string, string> {
  const url = sandbox.proxyUrl;
  return {
    HTTP_PROXY: url,
    HTTPS_PROXY: url,
    ALL_PROXY: url,
    http_proxy: url,
    https_proxy: url,
    all_proxy: url,
    NO_PROXY,
    no_proxy: NO_PROXY,
  };
}
