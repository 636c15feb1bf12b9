/**
 * Which resolved addresses the proxy may connect to. A policy names hosts;
 * what a name resolves to is checked here, after resolution, so an allowed
 * name that points inside (a DNS answer of 127.0.0.1, 10.x, 169.254.169.254,
 * the worker's own address) reaches nothing the operator did not open.
 *
 * Refused unless SANDQUEUE_EGRESS_ALLOW_PRIVATE=true: loopback, private
 * (RFC 1918, IPv6 unique local), shared (100.64/10), link-local (cloud
 * metadata), unspecified, multicast and reserved ranges, and every address of
 * the worker's interfaces; IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is
 * checked as the IPv4 address it carries. SANDQUEUE_EGRESS_DENY_ADDRESSES
 * adds ranges refused in every case.
 */
import { BlockList, isIP } from "node:net";
import { networkInterfaces } from "node:os";

/** [range, why] pairs of the built-in refusal. */
const SPECIAL_V4: readonly [string, number, string][] = [
  ["0.0.0.0", 8, "an unspecified ('this network') address"],
  ["10.0.0.0", 8, "a private address"],
  ["100.64.0.0", 10, "a shared (carrier-grade NAT) address"],
  ["127.0.0.0", 8, "a loopback address"],
  ["169.254.0.0", 16, "a link-local address (cloud metadata lives there)"],
  ["172.16.0.0", 12, "a private address"],
  ["192.0.0.0", 24, "an IETF protocol address"],
  ["192.168.0.0", 16, "a private address"],
  ["198.18.0.0", 15, "a benchmarking address"],
  ["224.0.0.0", 4, "a multicast address"],
  ["240.0.0.0", 4, "a reserved address"],
];
const SPECIAL_V6: readonly [string, number, string][] = [
  ["::", 96, "an unspecified, loopback or IPv4-compatible address"],
  ["100::", 64, "a discard address"],
  ["fc00::", 7, "a private (unique local) address"],
  ["fe80::", 10, "a link-local address"],
  ["fec0::", 10, "a site-local address"],
  ["ff00::", 8, "a multicast address"],
];

function list(ranges: readonly [string, number, string][], family: "ipv4" | "ipv6"): { block: BlockList; why: string }[] {
  return ranges.map(([net, bits, why]) => {
    const block = new BlockList();
    block.addSubnet(net, bits, family);
    return { block, why };
  });
}

const V4 = list(SPECIAL_V4, "ipv4");
const V6 = list(SPECIAL_V6, "ipv6");

/** The IPv4 address an IPv6 address carries (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16), if any. */
export function embeddedIpv4(v6: string): string | null {
  const groups = expandV6(v6);
  if (!groups) return null;
  const v4 = (hi: number, lo: number): string => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zero = (from: number, to: number): boolean => groups.slice(from, to).every((g) => g === 0);
  if (zero(0, 5) && groups[5] === 0xffff) return v4(groups[6]!, groups[7]!);
  if (groups[0] === 0x64 && groups[1] === 0xff9b && zero(2, 6)) return v4(groups[6]!, groups[7]!);
  if (groups[0] === 0x2002) return v4(groups[1]!, groups[2]!);
  return null;
}

/** Eight 16-bit groups of an IPv6 address (a trailing dotted IPv4 part included). */
function expandV6(addr: string): number[] | null {
  let a = addr.toLowerCase().split("%")[0]!;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  if (dotted) {
    const [p, q, r, s] = dotted[1]!.split(".").map(Number) as [number, number, number, number];
    a = `${a.slice(0, -dotted[1]!.length)}${((p << 8) | q).toString(16)}:${((r << 8) | s).toString(16)}`;
  }
  const [head, tail] = a.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const fill = tail === undefined ? [] : new Array<string>(8 - h.length - t.length).fill("0");
  const groups = [...h, ...fill, ...t].map((g) => parseInt(g, 16));
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : null;
}

export interface AddressPolicyOptions {
  allowPrivate: boolean;
  /** Addresses or CIDR ranges refused in every case. */
  deny: readonly string[];
  /** The worker's own addresses; default: every interface's, read now. */
  ownAddresses?: readonly string[];
}

export class AddressPolicy {
  private readonly allowPrivate: boolean;
  private readonly deny = new BlockList();
  private readonly own: ReadonlySet<string>;

  constructor(opts: AddressPolicyOptions) {
    this.allowPrivate = opts.allowPrivate;
    for (const entry of opts.deny) {
      const [addr, bits] = entry.split("/") as [string, string | undefined];
      const family = isIP(addr) === 6 ? "ipv6" : "ipv4";
      if (bits === undefined) this.deny.addAddress(addr, family);
      else this.deny.addSubnet(addr, Number(bits), family);
    }
    const own = opts.ownAddresses ?? Object.values(networkInterfaces()).flatMap((ifs) => (ifs ?? []).map((i) => i.address));
    this.own = new Set(own.map(canonical));
  }

  /** Why the proxy must not connect to `address`, or null when it may. */
  problem(address: string): string | null {
    const family = isIP(address);
    if (family === 0) return `${address} is not an IP address`;
    const v4 = family === 6 ? embeddedIpv4(address) : address;
    const asV4 = v4 !== null && isIP(v4) === 4 ? v4 : null;
    if (this.deny.check(address, family === 4 ? "ipv4" : "ipv6") || (asV4 !== null && asV4 !== address && this.deny.check(asV4, "ipv4"))) {
      return `${address} is in SANDQUEUE_EGRESS_DENY_ADDRESSES`;
    }
    if (this.allowPrivate) return null;
    const hit = asV4 !== null ? V4.find((r) => r.block.check(asV4, "ipv4")) : V6.find((r) => r.block.check(address, "ipv6"));
    if (hit) return `${address} is ${hit.why}`;
    if (this.own.has(canonical(address)) || (asV4 !== null && this.own.has(asV4))) return `${address} is an address of the worker itself`;
    return null;
  }
}

/** One spelling per address, so the worker's own addresses compare by value. */
function canonical(address: string): string {
  if (isIP(address) !== 6) return address;
  const groups = expandV6(address);
  return groups ? groups.map((g) => g.toString(16)).join(":") : address.toLowerCase();
}
