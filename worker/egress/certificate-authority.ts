/**
 * The worker's own certificate authority, for the hosts whose TLS the proxy
 * opens (a secret is bound to them, or a rule restricts methods or paths).
 *
 * Made at worker start, in memory only: an ECDSA P-256 key that never
 * leaves the process and a self-signed CA certificate that sandboxes trust
 * through their CA bundle. Leaf certificates are issued per host on first
 * use (one shared leaf key; ~0.1 ms to sign) and cached. Node has no API
 * to build certificates, hence the small DER encoder below (X.509 v3,
 * RFC 5280: only what TLS clients check).
 */
import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from "node:crypto";
import { isIP } from "node:net";
import { createSecureContext, type SecureContext } from "node:tls";

// --- DER -------------------------------------------------------------------

function der(tag: number, body: Buffer): Buffer {
  const n = body.length;
  let len: Buffer;
  if (n < 0x80) len = Buffer.from([n]);
  else {
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
    len = Buffer.from([0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([Buffer.from([tag]), len, body]);
}

const seq = (...items: Buffer[]): Buffer => der(0x30, Buffer.concat(items));
const set = (...items: Buffer[]): Buffer => der(0x31, Buffer.concat(items));
const octets = (b: Buffer): Buffer => der(0x04, b);
const bitString = (b: Buffer): Buffer => der(0x03, Buffer.concat([Buffer.from([0]), b]));
const bool = (v: boolean): Buffer => der(0x01, Buffer.from([v ? 0xff : 0]));
const utf8 = (s: string): Buffer => der(0x0c, Buffer.from(s, "utf8"));
const explicit = (n: number, body: Buffer): Buffer => der(0xa0 + n, body);

function integer(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && b[i + 1]! < 0x80) i++;
  const body = b.subarray(i);
  return der(0x02, body[0]! >= 0x80 ? Buffer.concat([Buffer.from([0]), body]) : body);
}

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split(".").map(Number) as [number, number, ...number[]];
  const bytes = [40 * a + b];
  for (const v of rest) {
    const parts = [v & 0x7f];
    for (let x = Math.floor(v / 128); x > 0; x = Math.floor(x / 128)) parts.unshift((x & 0x7f) | 0x80);
    bytes.push(...parts);
  }
  return der(0x06, Buffer.from(bytes));
}

/** UTCTime until 2049, GeneralizedTime after (RFC 5280 4.1.2.5). */
function time(d: Date): Buffer {
  const iso = d.toISOString().replace(/[-:T]/g, "").slice(0, 14);
  return d.getUTCFullYear() < 2050 ? der(0x17, Buffer.from(`${iso.slice(2)}Z`)) : der(0x18, Buffer.from(`${iso}Z`));
}

const OID = {
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  subjectAltName: "2.5.29.17",
  subjectKeyId: "2.5.29.14",
  authorityKeyId: "2.5.29.35",
};

function name(cn: string): Buffer {
  return seq(set(seq(oid(OID.organization), utf8("sandqueue"))), set(seq(oid(OID.commonName), utf8(cn))));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
}

/** keyUsage bits, first bit the most significant of the first byte. */
function keyUsage(bits: number[]): Buffer {
  let v = 0;
  for (const b of bits) v |= 0x80 >> b;
  return der(0x03, Buffer.from([7 - Math.max(...bits), v]));
}

function spki(key: KeyObject): Buffer {
  return key.export({ type: "spki", format: "der" });
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey bits (the SPKI's last BIT STRING; for P-256 its last 65 bytes). */
function keyId(publicKeyDer: Buffer): Buffer {
  return createHash("sha1").update(publicKeyDer.subarray(publicKeyDer.length - 65)).digest();
}

interface CertInput {
  subject: string;
  issuer: string;
  publicKey: KeyObject;
  signingKey: KeyObject;
  issuerKeyId: Buffer;
  notBefore: Date;
  notAfter: Date;
  ca: boolean;
  /** Host names or IP addresses (leaf only). */
  altNames?: string[];
}

function certificate(c: CertInput): Buffer {
  const pub = spki(c.publicKey);
  const exts = [
    extension(OID.basicConstraints, true, c.ca ? seq(bool(true), integer(Buffer.from([0]))) : seq()),
    extension(OID.keyUsage, true, keyUsage(c.ca ? [5, 6] : [0])),
    extension(OID.subjectKeyId, false, octets(keyId(pub))),
    extension(OID.authorityKeyId, false, seq(der(0x80, c.issuerKeyId))),
  ];
  if (!c.ca) {
    exts.push(extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth))));
    const alt = (c.altNames ?? []).map((n) => {
      if (isIP(n) === 4) return der(0x87, Buffer.from(n.split(".").map(Number)));
      if (isIP(n) === 6) return der(0x87, ipv6Bytes(n));
      return der(0x82, Buffer.from(n, "ascii"));
    });
    exts.push(extension(OID.subjectAltName, false, seq(...alt)));
  }
  const serial = randomBytes(16);
  serial[0]! &= 0x7f;
  const sigAlg = seq(oid(OID.ecdsaWithSha256));
  const tbs = seq(
    explicit(0, integer(Buffer.from([2]))),
    integer(serial),
    sigAlg,
    name(c.issuer),
    seq(time(c.notBefore), time(c.notAfter)),
    name(c.subject),
    pub,
    explicit(3, seq(...exts)),
  );
  return seq(tbs, sigAlg, bitString(sign("sha256", tbs, c.signingKey)));
}

function ipv6Bytes(addr: string): Buffer {
  const [head, tail] = addr.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = [...h, ...new Array<string>(tail === undefined ? 0 : 8 - h.length - t.length).fill("0"), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

function pem(derBytes: Buffer, label: string): string {
  const b64 = derBytes.toString("base64").replace(/.{64}/g, "$&\n");
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith("\n") ? "" : "\n"}-----END ${label}-----\n`;
}

// --- the authority ------------------------------------------------------------

const DAY = 86_400_000;
/** Leaf certificates are re-issued after this, well inside their validity. */
const LEAF_REUSE_MS = DAY;
const LEAF_CACHE_MAX = 1000;

export class CertificateAuthority {
  /** The CA certificate sandboxes trust (PEM). */
  readonly certPem: string;
  readonly commonName: string;
  private readonly caKey: KeyObject;
  private readonly caKeyId: Buffer;
  private readonly leafPublicKey: KeyObject;
  private readonly leafKeyPem: string;
  private readonly leaves = new Map<string, { context: SecureContext; certPem: string; at: number }>();

  constructor(opts: { commonName?: string } = {}) {
    const now = Date.now();
    const ca = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    this.caKey = ca.privateKey;
    this.caKeyId = keyId(spki(ca.publicKey));
    const cn = opts.commonName ?? `sandqueue worker egress CA ${randomBytes(4).toString("hex")}`;
    this.certPem = pem(
      certificate({
        subject: cn,
        issuer: cn,
        publicKey: ca.publicKey,
        signingKey: ca.privateKey,
        issuerKeyId: this.caKeyId,
        notBefore: new Date(now - DAY),
        notAfter: new Date(now + 365 * DAY),
        ca: true,
      }),
      "CERTIFICATE",
    );
    this.commonName = cn;
    // One key for every leaf: a leaf is only as trusted as the CA that signed it for one host.
    const leaf = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    this.leafPublicKey = leaf.publicKey;
    this.leafKeyPem = leaf.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  }

  /** A TLS server context presenting a certificate for `host` (a name or an IP address), issued by this CA. */
  contextFor(host: string): SecureContext {
    const now = Date.now();
    const hit = this.leaves.get(host);
    if (hit && now - hit.at < LEAF_REUSE_MS) return hit.context;
    const certPem = pem(
      certificate({
        subject: host.slice(0, 64),
        issuer: this.commonName,
        publicKey: this.leafPublicKey,
        signingKey: this.caKey,
        issuerKeyId: this.caKeyId,
        notBefore: new Date(now - DAY),
        notAfter: new Date(now + 7 * DAY),
        ca: false,
        altNames: [host],
      }),
      "CERTIFICATE",
    );
    const context = createSecureContext({ key: this.leafKeyPem, cert: certPem + this.certPem });
    if (this.leaves.size >= LEAF_CACHE_MAX) this.leaves.delete(this.leaves.keys().next().value!);
    this.leaves.set(host, { context, certPem, at: now });
    return context;
  }

  /** The leaf certificate last issued for `host` (tests). */
  leafPem(host: string): string | undefined {
    return this.leaves.get(host)?.certPem;
  }
}
