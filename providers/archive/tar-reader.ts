/**
 * The one tar reader for incoming archives (extractTar, validateTar,
 * normalizeTar): a synchronous, incremental parser over input chunks, with
 * no stream object per entry.
 *
 * The caller feeds a chunk, then calls `next()` until it returns NEED; a
 * DATA event hands out a view of the fed chunk (valid until the next
 * `feed`), so entry bodies go from the input buffer to write(2) without a
 * copy. Only partial header blocks and metadata bodies (pax, GNU long
 * names) are copied. When the input is exhausted the caller calls `end()`,
 * which throws if the archive was cut short.
 *
 * Formats: POSIX ustar (the prefix field), pax extended headers ('x':
 * path, linkpath, size; other keys ignored), pax global headers ('g',
 * ignored: they must not rename later entries), GNU long names ('L') and
 * long link names ('K'), base-256 numbers. GNU sparse entries (type 'S',
 * or any GNU.sparse.* pax key: formats 0.0, 0.1 and 1.0) are marked
 * `sparse` for the rules to refuse: their body is a sparse map plus data,
 * not the file's content. Rejected (TAR_CORRUPT): a bad
 * header checksum, an unknown header format, non-numeric numeric fields,
 * malformed pax records, metadata bodies over 1 MiB, metadata headers not
 * followed by an entry, non-zero data after the end-of-archive marker, an
 * archive that ends inside a header or without an end-of-archive marker.
 * An archive that ends inside an entry's body (or its padding) is
 * TAR_SIZE_MISMATCH. The entry rules themselves (paths, kinds, sizes,
 * caps) are not checked here but in entry-rules.ts.
 */
import { ErrorCodes } from "../../errors/index.js";
import { tarError } from "./entry-rules.js";
import type { Headers } from "./tar-io.js";

/** next(): more input is needed (or the input is done: call end()). */
export const NEED = 0;
/** next(): `header` holds the next entry; its body (header.size bytes) follows as DATA events. */
export const HEADER = 1;
/** next(): `data` is the next piece of the current entry's body. */
export const DATA = 2;

const BLOCK = 512;
/** pax and GNU long-name bodies are buffered: capped (paths are at most 4096 bytes anyway). */
const MAX_META_BYTES = 1024 * 1024;
/** ±100 million days, the range of a JS Date, in seconds. */
const MAX_MTIME_S = 8.64e12;

/** Parser states. */
const State = {
  Header: 0,
  Body: 1,
  Padding: 2,
  Meta: 3,
  MetaPadding: 4,
  /** After the end-of-archive marker: only zero bytes may follow. */
  Trailer: 5,
} as const;
type State = (typeof State)[keyof typeof State];

type EntryType = NonNullable<Headers["type"]>;

function typeOf(flag: number): EntryType | undefined {
  switch (flag) {
    case 0:
    case 0x30: // '0'
      return "file";
    case 0x31:
      return "link";
    case 0x32:
      return "symlink";
    case 0x33:
      return "character-device";
    case 0x34:
      return "block-device";
    case 0x35:
      return "directory";
    case 0x36:
      return "fifo";
    case 0x37:
      return "contiguous-file";
    default:
      return undefined; // GNU 'D', 'M', 'S' (sparse), 'V', ...: refused by the rules as special entries
  }
}

const corrupt = (why: string) => tarError(ErrorCodes.TAR_CORRUPT, `archive rejected: not a valid tar stream (${why})`);

/** A NUL-terminated string field. */
function str(b: Buffer, off: number, len: number, enc: BufferEncoding = "utf8"): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString(enc, off, end);
}

/**
 * A numeric field: octal digits (leading spaces allowed, ended by a space,
 * a NUL or the field's end; an empty field is 0), or base-256 when the
 * first byte has its high bit set (0x80 positive, 0xff negative). NaN when
 * malformed.
 */
function num(b: Buffer, off: number, len: number): number {
  const first = b[off]!;
  if (first & 0x80) {
    if (first !== 0x80 && first !== 0xff) return NaN;
    const neg = first === 0xff;
    let v = 0;
    for (let i = off + 1; i < off + len; i++) v = v * 256 + (neg ? 0xff - b[i]! : b[i]!);
    return neg ? -(v + 1) : v;
  }
  let i = off;
  const end = off + len;
  while (i < end && b[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) return NaN;
    v = v * 8 + (c - 0x30);
    digits++;
  }
  // Anything after the terminator must be a terminator too ("123 \0" is fine, "1 2" is not).
  for (; i < end; i++) if (b[i] !== 0 && b[i] !== 0x20) return NaN;
  return digits === 0 ? 0 : v;
}

function isZeroBlock(b: Buffer, off: number): boolean {
  for (let i = off; i < off + BLOCK; i += 4) {
    if (b.readUInt32LE(i) !== 0) return false;
  }
  return true;
}

const USTAR = Buffer.from("ustar\0", "latin1");
const GNU = Buffer.from("ustar  \0", "latin1");

interface Pax {
  path?: string;
  linkpath?: string;
  size?: number;
  sparse?: boolean;
}

/** pax records: "<len> <key>=<value>\n", len counting the whole record. */
function parsePax(buf: Buffer): Pax {
  const out: Pax = {};
  let off = 0;
  while (off < buf.length) {
    if (buf[off] === 0) {
      // Some writers pad the body with NULs.
      for (let i = off; i < buf.length; i++) if (buf[i] !== 0) throw corrupt("malformed pax record");
      break;
    }
    let sp = off;
    while (sp < buf.length && buf[sp]! >= 0x30 && buf[sp]! <= 0x39) sp++;
    if (sp === off || sp - off > 7 || buf[sp] !== 0x20) throw corrupt("malformed pax record");
    const len = Number(buf.toString("latin1", off, sp));
    const end = off + len;
    if (len < sp - off + 4 || end > buf.length || buf[end - 1] !== 0x0a) throw corrupt("malformed pax record");
    const eq = buf.indexOf(0x3d, sp + 1);
    if (eq === -1 || eq >= end - 1 || eq === sp + 1) throw corrupt("malformed pax record");
    const key = buf.toString("utf8", sp + 1, eq);
    const value = buf.toString("utf8", eq + 1, end - 1);
    if (key.startsWith("GNU.sparse.")) out.sparse = true;
    if (key === "path") out.path = value;
    else if (key === "linkpath") out.linkpath = value;
    else if (key === "size") {
      if (!/^[0-9]{1,16}$/.test(value)) throw corrupt(`invalid pax size ${JSON.stringify(value.slice(0, 40))}`);
      out.size = Number(value);
    }
    off = end;
  }
  return out;
}

export class TarReader {
  /** The entry announced by the last HEADER event. */
  header!: Headers & { size: number };
  /** The body piece of the last DATA event: a view of the fed chunk. */
  data!: Buffer;
  /** Bytes of the current entry's body not handed out yet (0 once the last DATA event came). */
  bodyLeft = 0;
  /** Bytes fed so far (for messages). */
  offset = 0;

  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;
  private state: State = State.Header;
  private readonly partial = Buffer.allocUnsafe(BLOCK);
  private partialLen = 0;
  private padLeft = 0;
  private metaType = 0;
  private metaLeft = 0;
  private metaParts: Buffer[] = [];
  private pax: Pax | null = null;
  private longName: string | null = null;
  private longLink: string | null = null;

  /** The next input chunk; the previous one must have been read to NEED. */
  feed(chunk: Buffer): void {
    this.chunk = chunk;
    this.pos = 0;
    this.offset += chunk.length;
  }

  /** NEED, HEADER or DATA; throws SnapshotError (TAR_*) on a malformed archive. */
  next(): number {
    for (;;) {
      const avail = this.chunk.length - this.pos;
      switch (this.state) {
        case State.Header: {
          let block: Buffer;
          let at: number;
          if (this.partialLen === 0 && avail >= BLOCK) {
            block = this.chunk;
            at = this.pos;
            this.pos += BLOCK;
          } else {
            if (avail === 0) return NEED;
            const n = Math.min(BLOCK - this.partialLen, avail);
            this.chunk.copy(this.partial, this.partialLen, this.pos, this.pos + n);
            this.pos += n;
            this.partialLen += n;
            if (this.partialLen < BLOCK) return NEED;
            this.partialLen = 0;
            block = this.partial;
            at = 0;
          }
          if (this.parseHeader(block, at)) return HEADER;
          break;
        }
        case State.Body: {
          if (avail === 0) return NEED;
          const n = Math.min(this.bodyLeft, avail);
          this.data = this.chunk.subarray(this.pos, this.pos + n);
          this.pos += n;
          this.bodyLeft -= n;
          if (this.bodyLeft === 0) this.state = this.padLeft > 0 ? State.Padding : State.Header;
          return DATA;
        }
        case State.Padding:
        case State.MetaPadding: {
          if (avail === 0) return NEED;
          const n = Math.min(this.padLeft, avail);
          this.pos += n;
          this.padLeft -= n;
          if (this.padLeft === 0) this.state = State.Header;
          break;
        }
        case State.Meta: {
          if (avail === 0) return NEED;
          const n = Math.min(this.metaLeft, avail);
          this.metaParts.push(Buffer.from(this.chunk.subarray(this.pos, this.pos + n)));
          this.pos += n;
          this.metaLeft -= n;
          if (this.metaLeft === 0) {
            this.applyMeta(Buffer.concat(this.metaParts));
            this.metaParts = [];
            this.state = this.padLeft > 0 ? State.MetaPadding : State.Header;
          }
          break;
        }
        case State.Trailer: {
          for (let i = this.pos; i < this.chunk.length; i++) {
            if (this.chunk[i] !== 0) throw corrupt(`data after the end-of-archive marker at byte ${this.offset - this.chunk.length + i}`);
          }
          this.pos = this.chunk.length;
          return NEED;
        }
      }
    }
  }

  /** The input is exhausted: throws unless the archive ended properly. */
  end(): void {
    switch (this.state) {
      case State.Trailer:
        return;
      case State.Body:
      case State.Padding:
        throw tarError(ErrorCodes.TAR_SIZE_MISMATCH, `archive rejected: it ends inside an entry (${this.bodyLeft} bytes of ${JSON.stringify(this.header.name).slice(0, 120)} missing)`, this.header.name);
      case State.Header:
        if (this.partialLen > 0) throw corrupt("it ends inside a header");
        if (this.pax || this.longName !== null || this.longLink !== null) throw corrupt("it ends after an extended header");
        throw corrupt("it ends without an end-of-archive marker (truncated?)");
      default:
        throw corrupt("it ends inside an extended header");
    }
  }

  /** True when the block is an entry header (now in this.header); false for end/metadata blocks. */
  private parseHeader(b: Buffer, at: number): boolean {
    if (isZeroBlock(b, at)) {
      if (this.pax || this.longName !== null || this.longLink !== null) throw corrupt("an extended header is not followed by an entry");
      this.state = State.Trailer;
      return false;
    }
    let sum = 8 * 0x20;
    for (let i = at; i < at + 148; i++) sum += b[i]!;
    for (let i = at + 156; i < at + BLOCK; i++) sum += b[i]!;
    if (num(b, at + 148, 8) !== sum) throw corrupt(`bad header checksum at byte ${this.offset - this.chunk.length + this.pos - BLOCK}`);
    const ustar = b.compare(USTAR, 0, 6, at + 257, at + 263) === 0;
    if (!ustar && b.compare(GNU, 0, 8, at + 257, at + 265) !== 0) throw corrupt("unknown header format");

    const flag = b[at + 156]!;
    const size = num(b, at + 124, 12);
    if (Number.isNaN(size)) throw corrupt("invalid size field");
    const padding = (BLOCK - (size % BLOCK)) % BLOCK;

    if (flag === 0x78 /* x */ || flag === 0x67 /* g */ || flag === 0x4c /* L */ || flag === 0x4b /* K */) {
      if (!(size >= 0 && size <= MAX_META_BYTES)) throw corrupt(`an extended header of ${size} bytes`);
      this.metaType = flag;
      this.metaLeft = size;
      this.padLeft = padding;
      if (size === 0) this.applyMeta(Buffer.alloc(0));
      this.state = size > 0 ? State.Meta : State.Header;
      return false;
    }

    let name = str(b, at, 100);
    if (ustar && b[at + 345] !== 0) name = `${str(b, at + 345, 155)}/${name}`;
    let type = typeOf(flag);
    if (type === "file" && flag === 0 && name.endsWith("/")) type = "directory"; // pre-POSIX directories
    let sparse = flag === 0x53; // 'S': old GNU sparse
    const mode = num(b, at + 100, 8);
    const uid = num(b, at + 108, 8);
    const gid = num(b, at + 116, 8);
    const mtime = num(b, at + 136, 12);
    if (Number.isNaN(mode) || Number.isNaN(uid) || Number.isNaN(gid) || Number.isNaN(mtime)) throw corrupt(`invalid numeric field in the header of ${JSON.stringify(name).slice(0, 120)}`);
    if (Math.abs(mtime) > MAX_MTIME_S) throw corrupt(`invalid mtime in the header of ${JSON.stringify(name).slice(0, 120)}`);
    let linkname: string | undefined = b[at + 157] === 0 ? undefined : str(b, at + 157, 100);

    let entrySize = size;
    // Empty long names are ignored, like empty pax values (an empty name would read as the archive root).
    if (this.longName) name = this.longName;
    if (this.longLink) linkname = this.longLink;
    const pax = this.pax;
    if (pax) {
      if (pax.path) name = pax.path;
      if (pax.linkpath) linkname = pax.linkpath;
      if (pax.size !== undefined) entrySize = pax.size;
      if (pax.sparse) sparse = true;
    }
    this.pax = null;
    this.longName = null;
    this.longLink = null;

    this.header = {
      name,
      type,
      mode,
      uid,
      gid,
      size: entrySize,
      mtime: new Date(mtime * 1000),
      linkname,
      uname: str(b, at + 265, 32),
      gname: str(b, at + 297, 32),
    };
    if (sparse) this.header.sparse = true;
    if (entrySize < 0) throw tarError(ErrorCodes.TAR_SIZE_MISMATCH, `archive rejected: ${JSON.stringify(name).slice(0, 120)} has an invalid size`, name);
    this.bodyLeft = entrySize;
    this.padLeft = (BLOCK - (entrySize % BLOCK)) % BLOCK;
    this.state = entrySize > 0 ? State.Body : State.Header;
    return true;
  }

  private applyMeta(body: Buffer): void {
    switch (this.metaType) {
      case 0x78:
        this.pax = { ...this.pax, ...parsePax(body) };
        break;
      case 0x67:
        parsePax(body); // validated, then ignored: a global header must not rename or resize later entries
        break;
      case 0x4c:
        this.longName = str(body, 0, body.length);
        break;
      case 0x4b:
        this.longLink = str(body, 0, body.length);
        break;
    }
  }
}
