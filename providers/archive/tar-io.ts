/**
 * Reading side: entries of an incoming tar stream through the one tar
 * reader (tar-reader.ts), for the re-encoders (validateTar, normalizeTar).
 * Writing side: tar-stream's pack, with backpressure. tar-stream uses
 * streamx streams; everything that leaves this folder is a plain node
 * Readable.
 */
import { once } from "node:events";
import { Readable } from "node:stream";
import tarStream from "tar-stream";
import type { Pack } from "tar-stream";
import type { CheckedEntry } from "./entry-rules.js";
import { DATA, HEADER, NEED, TarReader } from "./tar-reader.js";

/**
 * A header as the reader produces it and tar-stream's pack writes it (fields
 * may be missing in hostile archives). `sparse`: the reader saw a GNU sparse
 * entry (refused by the rules; never written).
 */
export type Headers = Parameters<Pack["entry"]>[0] & { sparse?: boolean };

export interface TarEntry {
  header: Headers & { size: number };
  /** The body: exactly header.size bytes, or a TAR_SIZE_MISMATCH error if the archive ends first. */
  body: AsyncIterable<Buffer>;
}

/**
 * Yields the entries of a tar stream one at a time; the caller consumes (or
 * drains) each body before asking for the next (a body left unread is
 * skipped). Input errors (a network stream that broke, an abort) are
 * rethrown as they are, so a retryable fault stays retryable; malformed
 * archives fail with the reader's SANDQ_ERR_TAR_* errors.
 */
export async function* readEntries(input: Readable, signal?: AbortSignal): AsyncGenerator<TarEntry> {
  const onAbort = () => input.destroy((signal?.reason as Error | undefined) ?? new Error("aborted"));
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const chunks = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const reader = new TarReader();
  let ended = false;
  /** Feeds the next input chunk; false once the input is exhausted (and the archive checked complete). */
  const pull = async (): Promise<boolean> => {
    if (ended) return false;
    const r = await chunks.next();
    if (r.done) {
      ended = true;
      reader.end();
      return false;
    }
    reader.feed(typeof r.value === "string" ? Buffer.from(r.value) : r.value);
    return true;
  };
  async function* body(): AsyncGenerator<Buffer> {
    while (reader.bodyLeft > 0) {
      const ev = reader.next();
      if (ev === DATA) yield reader.data;
      else if (ev === NEED) await pull();
    }
  }
  try {
    for (;;) {
      const ev = reader.next();
      if (ev === NEED) {
        if (!(await pull())) return;
      } else if (ev === HEADER) {
        yield { header: reader.header, body: body() };
        // Whatever the consumer left of the body is skipped.
        while (reader.bodyLeft > 0) if (reader.next() === NEED) await pull();
      }
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!ended) await chunks.return?.();
  }
}

export function headerFor(e: CheckedEntry): Headers {
  const h: Headers = {
    name: e.kind === "directory" ? `${e.path}/` : e.path,
    type: e.kind,
    mode: e.mode,
    mtime: e.mtime,
    uid: e.uid,
    gid: e.gid,
    uname: "",
    gname: "",
    size: e.kind === "file" ? e.size : 0,
  };
  if (e.linkname !== undefined) h.linkname = e.linkname;
  return h;
}

/** Writes one entry into `pack`, respecting backpressure; resolves once it is fully written. */
export async function packEntry(pack: Pack, header: Headers, body?: AsyncIterable<Buffer>): Promise<void> {
  let done!: Promise<void>;
  const sink = (() => {
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return pack.entry(header, (err?: Error | null) => (err ? reject(err) : resolve()));
  })();
  (sink as unknown as NodeJS.EventEmitter).on("error", () => {}); // surfaces through `done` and the pack
  done.catch(() => {}); // observed below; the body may fail first and leave it pending
  if (header.type === "file" && body) {
    for await (const chunk of body) {
      if (!sink.write(chunk)) await Promise.race([once(sink, "drain"), done]);
    }
  }
  (sink as unknown as { end(): void }).end();
  await done;
}

/** A tar stream that also reports what went into it once it has ended. */
export interface ArchiveStream extends Readable {
  readonly stats: { files: number; bytes: number; entries: number; skipped: number };
}

/**
 * Runs `produce` against a fresh pack and returns the pack as a node
 * Readable. A failure of `produce` fails the stream; a consumer that goes
 * away stops `produce` at its next write.
 */
export function packStream(stats: ArchiveStream["stats"], produce: (pack: Pack) => Promise<void>): ArchiveStream {
  const pack = tarStream.pack();
  const out = Readable.from(pack as AsyncIterable<Buffer>, { objectMode: false }) as Readable & { stats: ArchiveStream["stats"] };
  out.stats = stats;
  // The error reaches the consumer through the iterator; without a listener streamx would also throw it globally.
  (pack as unknown as NodeJS.EventEmitter).on("error", () => {});
  out.once("close", () => {
    if (!pack.destroyed) pack.destroy(new Error("archive consumer went away"));
  });
  produce(pack).then(
    () => pack.finalize(),
    (err: unknown) => {
      // Readable.from rethrows what the pack iterator throws, so the consumer sees the real error.
      pack.destroy(err instanceof Error ? err : new Error(String(err)));
    },
  );
  return out;
}
