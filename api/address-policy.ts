/**
 * Which addresses a webhook may be sent to. A callback URL is the user's
 * input, and the API process sits inside the operator's network: a target
 * that resolves to loopback, a private range or link-local (cloud metadata
 * at 169.254.169.254) would let any key holder probe or hit internal
 * services. Those classes are refused unless the operator allows them;
 * addresses no service can legitimately be at (unspecified, multicast,
 * reserved) are always refused.
 */
import { isIP } from "node:net";

/** The classes an operator may allow (SANDQUEUE_CALLBACK_ALLOW). */
export const ADDRESS_CLASSES = ["loopback", "private", "link-local"] as const;
export type AddressClass = (typeof ADDRESS_CLASSES)[number];
export type AddressKind = AddressClass | "public" | "special";

type Range = { base: bigint; bits: number; width: 32 | 128; kind: Exclude<AddressKind, "public"> };

function v4(text: string): bigint {
  return text.split(".").reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function v6(text: string): bigint {
  let t = text.toLowerCase();
  const zone = t.indexOf("%");
  if (zone >= 0) t = t.slice(0, zone);
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two hex groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(t);
  if (dotted) {
    const n = v4(dotted[1]!);
    t = `${t.slice(0, -dotted[1]!.length)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = t.includes("::") ? t.split("::") : [t, undefined];
  const h = head ? head.split(":") : [];
  const tl = tail === undefined ? [] : tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - tl.length).fill("0"), ...tl];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || "0", 16)), 0n);
}

function range(cidr: string, kind: Range["kind"]): Range {
  const [addr, bits] = cidr.split("/") as [string, string];
  const width = isIP(addr) === 4 ? 32 : 128;
  return { base: width === 32 ? v4(addr) : v6(addr), bits: Number(bits), width, kind };
}

const RANGES: Range[] = [
  range("127.0.0.0/8", "loopback"),
  range("::1/128", "loopback"),
  range("10.0.0.0/8", "private"),
  range("172.16.0.0/12", "private"),
  range("192.168.0.0/16", "private"),
  range("100.64.0.0/10", "private"), // carrier-grade NAT
  range("fc00::/7", "private"), // unique local
  range("169.254.0.0/16", "link-local"),
  range("fe80::/10", "link-local"),
  range("0.0.0.0/8", "special"),
  range("192.0.0.0/24", "special"),
  range("198.18.0.0/15", "special"), // benchmarking
  range("224.0.0.0/4", "special"), // multicast
  range("240.0.0.0/4", "special"), // reserved, broadcast
  range("::/128", "special"),
  range("ff00::/8", "special"),
  range("100::/64", "special"), // discard
];

function inRange(n: bigint, width: 32 | 128, r: Range): boolean {
  if (r.width !== width) return false;
  const shift = BigInt(width - r.bits);
  return n >> shift === r.base >> shift;
}

/**
 * The class of an IP address. IPv6 forms that carry an IPv4 address
 * (::ffff:a.b.c.d mapped, ::a.b.c.d compatible, 64:ff9b::/96 NAT64,
 * 2002::/16 6to4) are judged by that address, since that is where the
 * packets go.
 */
export function classifyAddress(address: string): AddressKind {
  const family = isIP(address.split("%")[0]!);
  if (family === 0) return "special";
  if (family === 4) {
    const n = v4(address);
    return RANGES.find((r) => inRange(n, 32, r))?.kind ?? "public";
  }
  const n = v6(address);
  const embedded = embeddedV4(n);
  if (embedded !== null) return classifyAddress(embedded);
  return RANGES.find((r) => inRange(n, 128, r))?.kind ?? "public";
}

function embeddedV4(n: bigint): string | null {
  const low32 = n & 0xffffffffn;
  const asText = (x: bigint): string => [24n, 16n, 8n, 0n].map((s) => String((x >> s) & 0xffn)).join(".");
  if (n >> 32n === 0xffffn) return asText(low32); // ::ffff:a.b.c.d
  if (n >> 32n === 0n && low32 > 1n) return asText(low32); // ::a.b.c.d (deprecated, still routed by some stacks)
  if (n >> 32n === 0x0064ff9b0000000000000000n) return asText(low32); // 64:ff9b::/96
  if (n >> 112n === 0x2002n) return asText((n >> 80n) & 0xffffffffn); // 2002:aabb:ccdd::/48
  return null;
}

/** Why an address may not be a webhook target under `allow`, or null when it may. */
export function addressProblem(address: string, allow: readonly AddressClass[]): string | null {
  const kind = classifyAddress(address);
  if (kind === "public") return null;
  if (kind === "special") return `${address}, not a routable unicast address`;
  if (allow.includes(kind)) return null;
  return `${address}, a ${kind} address (the operator allows ${allow.length ? allow.join(", ") : "none"} in SANDQUEUE_CALLBACK_ALLOW)`;
}
