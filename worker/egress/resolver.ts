/**
 * Name resolution for the proxy: the sandbox never resolves anything
 * (it has no DNS), the proxy does, and then checks the answer
 * (addresses.ts) and connects to exactly the address it checked.
 *
 * Sources, one per worker: a hosts-format file (SANDQUEUE_EGRESS_HOSTS_FILE,
 * which replaces DNS: a name it lacks does not resolve; re-read when the
 * file changes), given DNS servers (SANDQUEUE_EGRESS_DNS_SERVERS), or the
 * system resolver (getaddrinfo: /etc/hosts, then DNS).
 */
import { lookup } from "node:dns/promises";
import { Resolver } from "node:dns/promises";
import { readFile, stat } from "node:fs/promises";
import { isIP } from "node:net";
import { normaliseHost } from "../../producer/network-policy.js";

export interface NameResolver {
  /** Addresses of `host` (normalised), IPv4 first; an IP literal is its own answer. Rejects when the name does not resolve. */
  resolve(host: string): Promise<string[]>;
}

export class ResolveError extends Error {}

/** Parses hosts-file text: `address name [name...]`, `#` comments; names normalised. */
export function parseHostsFile(text: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    if (!line) continue;
    const [address, ...names] = line.split(/\s+/);
    if (!address || isIP(address) === 0) continue;
    for (const name of names) {
      const host = normaliseHost(name);
      if (host === null) continue;
      const list = map.get(host) ?? [];
      if (!list.includes(address)) list.push(address);
      map.set(host, list);
    }
  }
  return map;
}

function ipv4First(addresses: string[]): string[] {
  return [...addresses.filter((a) => isIP(a) === 4), ...addresses.filter((a) => isIP(a) === 6)];
}

export class HostsFileResolver implements NameResolver {
  private cache: { mtimeMs: number; size: number; map: Map<string, string[]> } | null = null;
  private checkedAt = 0;

  constructor(private readonly file: string) {}

  async resolve(host: string): Promise<string[]> {
    if (isIP(host)) return [host];
    const map = await this.load();
    const found = map.get(host);
    if (!found?.length) throw new ResolveError(`${host} is not in the proxy's hosts file (SANDQUEUE_EGRESS_HOSTS_FILE replaces DNS)`);
    return ipv4First(found);
  }

  /** Re-read when the file changed; checked at most every 100 ms (a stat per request is not free). */
  private async load(): Promise<Map<string, string[]>> {
    const now = performance.now();
    if (this.cache && now - this.checkedAt < 100) return this.cache.map;
    this.checkedAt = now;
    let st;
    try {
      st = await stat(this.file);
    } catch (err) {
      throw new ResolveError(`the proxy's hosts file ${this.file} cannot be read: ${(err as Error).message}`);
    }
    if (this.cache && this.cache.mtimeMs === st.mtimeMs && this.cache.size === st.size) return this.cache.map;
    const map = parseHostsFile(await readFile(this.file, "utf8"));
    this.cache = { mtimeMs: st.mtimeMs, size: st.size, map };
    return map;
  }
}

export class DnsServersResolver implements NameResolver {
  private readonly resolver = new Resolver({ timeout: 3000, tries: 2 });

  constructor(servers: readonly string[]) {
    this.resolver.setServers([...servers]);
  }

  async resolve(host: string): Promise<string[]> {
    if (isIP(host)) return [host];
    const [v4, v6] = await Promise.allSettled([this.resolver.resolve4(host), this.resolver.resolve6(host)]);
    const found = [...(v4.status === "fulfilled" ? v4.value : []), ...(v6.status === "fulfilled" ? v6.value : [])];
    if (!found.length) {
      const why = v4.status === "rejected" ? (v4.reason as Error).message : "no addresses";
      throw new ResolveError(`${host} does not resolve (${why})`);
    }
    return found;
  }
}

export class SystemResolver implements NameResolver {
  async resolve(host: string): Promise<string[]> {
    if (isIP(host)) return [host];
    try {
      const found = await lookup(host, { all: true, verbatim: true });
      return ipv4First(found.map((a) => a.address));
    } catch (err) {
      throw new ResolveError(`${host} does not resolve (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
}

export function resolverFor(opts: { hostsFile?: string; dnsServers?: readonly string[] }): NameResolver {
  if (opts.hostsFile) return new HostsFileResolver(opts.hostsFile);
  if (opts.dnsServers?.length) return new DnsServersResolver(opts.dnsServers);
  return new SystemResolver();
}
