/**
 * SHA-256 on a worker thread, so hashing a snapshot (about 0.7-1 ms per MiB
 * on the development machine) overlaps with packing or extracting it on the
 * main thread instead of adding to it.
 *
 * Two kinds of jobs, each with a SharedArrayBuffer ring of its own taken
 * from a pool the thread keeps:
 * - a hash (ThreadedHash, 4 MiB ring: puts, and gets read as a stream):
 *   `update` copies a chunk into free ring space (a memcpy, far cheaper than
 *   the hash) and posts its offset; the thread acknowledges each piece once
 *   hashed, which frees that space. `update` waiting for space is the
 *   backpressure.
 * - a file read (ThreadedFileRead, 16 MiB ring: the file store's block path
 *   for hydrates): the thread itself reads the object (pread on the
 *   process's fd) into the ring a MiB at a time, hands each block to the
 *   main thread at once and hashes it in place; a slot is reused once it is
 *   hashed and the main thread has released it. The main thread works on
 *   exactly the bytes that are hashed, without copying them, and the
 *   read(2)s run here. The ring lets the thread run up to 16 MiB ahead while
 *   the main thread is slow (a stretch of small files) and the main thread
 *   catch up while the thread is slow (hashing a large file): with 4 MiB the
 *   two stalled each other, and a hydrate into tmpfs took 10-30% longer.
 * The memory this adds is therefore fixed (ring size x jobs open at once).
 * Fresh SharedArrayBuffers per chunk were tried and dropped: the thread's
 * heap keeps them alive until its own garbage collection, which rarely runs
 * (RSS grew by 200 MiB per hydrate). A ring is only reused once the thread
 * can no longer write into it (a read job's end, failure or confirmed stop).
 *
 * One thread per process, started on first use and kept (unref'd while no
 * job is open, so it never holds the process alive). Its code is evaluated
 * from a string, so it runs the same from dist/ and from the TypeScript
 * sources the tests load.
 */
import { Worker } from "node:worker_threads";
import { storeError } from "./store.js";

const RING_BYTES = 4 * 1024 * 1024;

const THREAD_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { readSync } = require("node:fs");
const rings = new Map();
const jobs = new Map();
const reads = new Map();
parentPort.on("message", (m) => {
  if (m.sab) rings.set(m.ring, new Uint8Array(m.sab));
  if (m.op === "open") {
    jobs.set(m.job, { hash: createHash("sha256"), ring: rings.get(m.ring) });
  } else if (m.op === "update") {
    const j = jobs.get(m.job);
    if (j === undefined) return; // dropped: nobody waits for it any more
    j.hash.update(j.ring.subarray(m.off, m.off + m.len));
    parentPort.postMessage({ job: m.job, op: "ack", len: m.len });
  } else if (m.op === "digest") {
    const j = jobs.get(m.job);
    jobs.delete(m.job);
    parentPort.postMessage({ job: m.job, op: "digest", hex: j.hash.digest("hex") });
  } else if (m.op === "drop") {
    jobs.delete(m.job);
  } else if (m.op === "read") {
    const slots = m.slots;
    const r = { job: m.job, fd: m.fd, ring: rings.get(m.ring), block: m.block, pos: 0, eof: false,
      hash: createHash("sha256"), free: [], flags: new Uint8Array(slots), unhashed: [], scheduled: false };
    for (let i = 0; i < slots; i++) r.free.push(i);
    reads.set(m.job, r);
    pump(r);
  } else if (m.op === "release") {
    const r = reads.get(m.job);
    if (r === undefined) return;
    if ((r.flags[m.slot] |= 2) === 3) {
      r.free.push(m.slot);
      if (!r.scheduled) {
        r.scheduled = true;
        setImmediate(pump, r);
      }
    }
  } else if (m.op === "stop") {
    // Always answered: the ring may only be reused once this thread no longer reads into it.
    reads.delete(m.job);
    parentPort.postMessage({ job: m.job, op: "stopped" });
  }
});
// A read job: fills free slots of its ring from the file (reading ahead), hands each block
// out at once, hashes blocks one per turn (releases and other jobs' messages come in
// between); a slot is free again once it is hashed (1) and released by the reader (2).
function pump(r) {
  r.scheduled = false;
  if (reads.get(r.job) !== r) return;
  try {
    while (!r.eof && r.free.length > 0) {
      const slot = r.free.shift();
      const off = slot * r.block;
      const n = readSync(r.fd, r.ring, off, r.block, r.pos);
      if (n === 0) {
        r.eof = true;
        r.free.unshift(slot);
        break;
      }
      r.pos += n;
      r.flags[slot] = 0;
      r.unhashed.push({ slot, off, n });
      parentPort.postMessage({ job: r.job, op: "block", slot, off, len: n });
    }
  } catch (err) {
    reads.delete(r.job);
    parentPort.postMessage({ job: r.job, op: "error", message: String(err && err.message), code: err && err.code });
    return;
  }
  const b = r.unhashed.shift();
  if (b !== undefined) {
    r.hash.update(r.ring.subarray(b.off, b.off + b.n));
    if ((r.flags[b.slot] |= 1) === 3) r.free.push(b.slot);
    if (!r.scheduled) {
      r.scheduled = true;
      setImmediate(pump, r);
    }
  } else if (r.eof) {
    reads.delete(r.job);
    parentPort.postMessage({ job: r.job, op: "end", hex: r.hash.digest("hex"), bytes: r.pos });
  }
}
`;

type Reply =
  | { job: number; op: "ack"; len: number }
  | { job: number; op: "digest"; hex: string }
  | { job: number; op: "block"; slot: number; off: number; len: number }
  | { job: number; op: "end"; hex: string; bytes: number }
  | { job: number; op: "error"; message: string; code?: string }
  | { job: number; op: "stopped" };

interface Listener {
  reply(r: Reply): void;
  fail(err: Error): void;
}

interface Ring {
  id: number;
  bytes: Uint8Array;
}

class HashThread {
  private readonly worker: Worker;
  private readonly listeners = new Map<number, Listener>();
  /** Free rings by size (hash rings and read rings differ). */
  private readonly freeRings = new Map<number, Ring[]>();
  private rings = 0;
  private nextJob = 1;

  constructor() {
    this.worker = new Worker(THREAD_SOURCE, { eval: true, name: "sandqueue-sha256" });
    this.worker.unref();
    this.worker.on("message", (r: Reply) => this.listeners.get(r.job)?.reply(r));
    const die = (err: Error) => {
      if (thread === this) thread = null;
      const ls = [...this.listeners.values()];
      this.listeners.clear();
      for (const l of ls) l.fail(err);
    };
    this.worker.on("error", die);
    this.worker.on("exit", (code) => die(new Error(`hash thread exited (code ${code})`)));
  }

  /** A new job with a ring of its own: a hash fed by `update`s ("open"), or a file read ("read"). */
  open(l: Listener, start: { op: "open" } | { op: "read"; fd: number; slots: number; block: number } = { op: "open" }, size = RING_BYTES): { job: number; ring: Ring } {
    const job = this.nextJob++;
    if (this.listeners.size === 0) this.worker.ref(); // a pending digest must keep the process alive
    this.listeners.set(job, l);
    let ring = this.freeRings.get(size)?.pop();
    if (ring === undefined) {
      ring = { id: ++this.rings, bytes: new Uint8Array(new SharedArrayBuffer(size)) };
      this.worker.postMessage({ ...start, job, ring: ring.id, sab: ring.bytes.buffer });
    } else {
      this.worker.postMessage({ ...start, job, ring: ring.id });
    }
    return { job, ring };
  }

  /**
   * Ends a job; its ring is reused at once. `drop`: the thread may still hold
   * updates of the job, which it skips from now on. A read job is closed only
   * once its thread side is over (ended, failed, or confirmed stopped).
   */
  close(job: number, ring: Ring, drop: boolean): void {
    if (!this.listeners.delete(job)) return;
    if (drop) this.worker.postMessage({ op: "drop", job });
    this.pool(ring);
    if (this.listeners.size === 0) this.worker.unref();
  }

  private pool(ring: Ring): void {
    const free = this.freeRings.get(ring.bytes.length);
    if (free) free.push(ring);
    else this.freeRings.set(ring.bytes.length, [ring]);
  }

  post(msg: object): void {
    this.worker.postMessage(msg);
  }
}

let thread: HashThread | null = null;

/**
 * What both kinds of job share: the process's hash thread, a job with its
 * ring, and one waiter that the thread's replies wake. The subclass reads
 * the replies; its fields are set before any arrives (replies are messages,
 * never synchronous).
 */
abstract class ThreadJob {
  protected readonly thread: HashThread;
  protected readonly job: number;
  protected readonly ring: Ring;
  private waiter: (() => void) | null = null;

  constructor(start?: Parameters<HashThread["open"]>[1], size?: number) {
    thread ??= new HashThread();
    this.thread = thread;
    const opened = thread.open({ reply: (r) => this.onReply(r), fail: (err) => this.onFail(err) }, start, size);
    this.job = opened.job;
    this.ring = opened.ring;
  }

  protected abstract onReply(r: Reply): void;
  protected abstract onFail(err: Error): void;

  /** Resolves at the next wake(). */
  protected sleep(): Promise<void> {
    return new Promise<void>((resolve) => (this.waiter = resolve));
  }

  protected wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
}

/** An incremental SHA-256 computed on the shared hash thread. Call `digest()` or `abandon()` once. */
export class ThreadedHash extends ThreadJob {
  /** Ring space not holding unhashed bytes, and where the next piece goes. */
  private free = RING_BYTES;
  private cursor = 0;
  private failure: Error | null = null;
  private digestWaiter: { resolve(hex: string): void; reject(err: Error): void } | null = null;
  private finished = false;
  bytes = 0;

  protected onReply(r: Reply): void {
    if (r.op === "ack") {
      this.free += r.len;
      this.wake();
    } else if (r.op === "digest") {
      this.thread.close(this.job, this.ring, false);
      this.digestWaiter?.resolve(r.hex);
    }
  }

  protected onFail(err: Error): void {
    this.failure = storeError("the snapshot hash thread failed", err);
    this.wake();
    this.digestWaiter?.reject(this.failure);
  }

  /**
   * Copies `chunk` into the ring for hashing; resolves once all of it is
   * copied (the caller may reuse the chunk then). One call at a time.
   */
  async update(chunk: Uint8Array): Promise<void> {
    for (let off = 0; off < chunk.length; ) {
      if (this.failure) throw this.failure;
      if (this.finished) return; // abandoned: the thread has forgotten this job
      const contiguous = Math.min(this.free, RING_BYTES - this.cursor);
      if (contiguous === 0) {
        await this.sleep();
        continue;
      }
      const n = Math.min(contiguous, chunk.length - off);
      this.ring.bytes.set(chunk.subarray(off, off + n), this.cursor);
      this.thread.post({ op: "update", job: this.job, off: this.cursor, len: n });
      this.free -= n;
      this.cursor = (this.cursor + n) % RING_BYTES;
      this.bytes += n;
      off += n;
    }
  }

  /** "sha256:<hex>" of everything passed to update. */
  digest(): Promise<string> {
    if (this.finished) return Promise.reject(new Error("ThreadedHash: digest after digest or abandon"));
    this.finished = true;
    if (this.failure) return Promise.reject(this.failure);
    const p = new Promise<string>((resolve, reject) => {
      this.digestWaiter = { resolve, reject };
    });
    this.thread.post({ op: "digest", job: this.job });
    return p.then((hex) => `sha256:${hex}`);
  }

  /** Forgets this hash (the stream it followed failed or was destroyed). */
  abandon(): void {
    if (this.finished) return;
    this.finished = true;
    this.thread.close(this.job, this.ring, true);
    this.wake();
  }
}

/** Bytes per read(2) of a ThreadedFileRead, and per block it hands out. */
const READ_BLOCK = 1024 * 1024;
/** A ThreadedFileRead's ring: how far the thread may read and hash ahead of the consumer. */
const READ_RING_BYTES = 16 * 1024 * 1024;

/**
 * A file read on the hash thread: the thread reads the file (from an fd of
 * this process, by position) into the ring a block at a time, up to a ring
 * ahead of the consumer, hands each block out at once and hashes it in
 * place, so the consumer works on exactly the bytes that are hashed,
 * without copying them, and the read(2)s and the hashing run off the main
 * thread. `next()` returns the blocks in file order, then null at the end
 * of the file; `digest` is known from then on. `close()` must be called
 * once (it resolves when the thread no longer touches the ring; only then
 * may the fd be closed).
 */
export class ThreadedFileRead extends ThreadJob {
  private readonly ready: { slot: number; off: number; len: number }[] = [];
  private current = -1;
  private failure: Error | null = null;
  /** The thread is done with this job: ended, failed, or stopped. */
  private threadDone = false;
  private stopped: Promise<void> | null = null;
  private onStopped: (() => void) | null = null;
  private closed = false;
  /** "sha256:<hex>" of the whole file, once next() returned null. */
  digest: string | null = null;
  bytes = 0;

  constructor(fd: number) {
    super({ op: "read", fd, slots: READ_RING_BYTES / READ_BLOCK, block: READ_BLOCK }, READ_RING_BYTES);
  }

  protected onReply(r: Reply): void {
    if (r.op === "block") this.ready.push(r);
    else if (r.op === "end") {
      this.threadDone = true;
      this.digest = `sha256:${r.hex}`;
      this.bytes = r.bytes;
    } else if (r.op === "error") {
      this.threadDone = true;
      this.failure = storeError("cannot read the snapshot object", Object.assign(new Error(r.message), { code: r.code }));
    } else if (r.op === "stopped") {
      this.threadDone = true;
      this.onStopped?.();
    }
    this.wake();
  }

  protected onFail(err: Error): void {
    this.threadDone = true;
    this.failure = storeError("the snapshot hash thread failed", err);
    this.wake();
    this.onStopped?.();
  }

  /** The next block (valid until the next call), or null at the end of the file. */
  async next(): Promise<Buffer | null> {
    if (this.closed) throw new Error("ThreadedFileRead: next after close");
    if (this.current >= 0) {
      if (!this.threadDone) this.thread.post({ op: "release", job: this.job, slot: this.current });
      this.current = -1;
    }
    for (;;) {
      if (this.failure) throw this.failure;
      const b = this.ready.shift();
      if (b !== undefined) {
        this.current = b.slot;
        return Buffer.from(this.ring.bytes.buffer, b.off, b.len);
      }
      if (this.digest !== null) return null;
      await this.sleep();
    }
  }

  /** Stops the read (if still running) and frees the ring once the thread has let go of it. */
  close(): Promise<void> {
    if (this.closed) return this.stopped ?? Promise.resolve();
    this.closed = true;
    if (this.threadDone) {
      this.thread.close(this.job, this.ring, false);
      this.stopped = Promise.resolve();
    } else {
      this.stopped = new Promise<void>((resolve) => (this.onStopped = resolve)).then(() => this.thread.close(this.job, this.ring, false));
      this.thread.post({ op: "stop", job: this.job });
    }
    return this.stopped;
  }
}
