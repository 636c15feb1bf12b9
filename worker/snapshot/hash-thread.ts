/**
 * SHA-256 on a worker thread, so hashing a snapshot (about 1 ms per MiB on
 * the development machine) overlaps with packing or extracting it on the
 * main thread instead of adding to it.
 *
 * Bytes travel through a ring: a 4 MiB SharedArrayBuffer per open hash,
 * taken from a pool the thread keeps. `update` copies a chunk into free ring
 * space (a memcpy, far cheaper than the hash) and posts its offset; the
 * thread acknowledges each piece once hashed, which frees that space. So the
 * memory this adds is fixed (ring size x hashes open at once), and `update`
 * waiting for space is the backpressure. Fresh SharedArrayBuffers per chunk
 * were tried and dropped: the thread's heap keeps them alive until its own
 * garbage collection, which rarely runs (RSS grew by 200 MiB per hydrate).
 *
 * One thread per process, started on first use and kept (unref'd while no
 * hash is open, so it never holds the process alive). Its code is evaluated
 * from a string, so it runs the same from dist/ and from the TypeScript
 * sources the tests load.
 */
import { Worker } from "node:worker_threads";
import { storeError } from "./store.js";

const RING_BYTES = 4 * 1024 * 1024;

const THREAD_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const rings = new Map();
const jobs = new Map();
parentPort.on("message", (m) => {
  if (m.op === "open") {
    if (m.sab) rings.set(m.ring, new Uint8Array(m.sab));
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
  }
});
`;

type Reply = { job: number; op: "ack"; len: number } | { job: number; op: "digest"; hex: string };

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
  private readonly freeRings: Ring[] = [];
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

  open(l: Listener): { job: number; ring: Ring } {
    const job = this.nextJob++;
    if (this.listeners.size === 0) this.worker.ref(); // a pending digest must keep the process alive
    this.listeners.set(job, l);
    let ring = this.freeRings.pop();
    if (ring === undefined) {
      ring = { id: ++this.rings, bytes: new Uint8Array(new SharedArrayBuffer(RING_BYTES)) };
      this.worker.postMessage({ op: "open", job, ring: ring.id, sab: ring.bytes.buffer });
    } else {
      this.worker.postMessage({ op: "open", job, ring: ring.id });
    }
    return { job, ring };
  }

  /** Ends a job. Its ring is reused at once: the thread skips the job's queued updates after the drop. */
  close(job: number, ring: Ring, drop: boolean): void {
    if (!this.listeners.delete(job)) return;
    if (drop) this.worker.postMessage({ op: "drop", job });
    this.freeRings.push(ring);
    if (this.listeners.size === 0) this.worker.unref();
  }

  post(msg: object): void {
    this.worker.postMessage(msg);
  }
}

let thread: HashThread | null = null;

/** An incremental SHA-256 computed on the shared hash thread. Call `digest()` or `abandon()` once. */
export class ThreadedHash {
  private readonly thread: HashThread;
  private readonly job: number;
  private readonly ring: Ring;
  /** Ring space not holding unhashed bytes, and where the next piece goes. */
  private free = RING_BYTES;
  private cursor = 0;
  private failure: Error | null = null;
  private spaceWaiter: (() => void) | null = null;
  private digestWaiter: { resolve(hex: string): void; reject(err: Error): void } | null = null;
  private finished = false;
  bytes = 0;

  constructor() {
    thread ??= new HashThread();
    this.thread = thread;
    const opened = this.thread.open({
      reply: (r) => {
        if (r.op === "ack") {
          this.free += r.len;
          this.wake();
        } else {
          this.thread.close(this.job, this.ring, false);
          this.digestWaiter?.resolve(r.hex);
        }
      },
      fail: (err) => {
        this.failure = storeError("the snapshot hash thread failed", err);
        this.wake();
        this.digestWaiter?.reject(this.failure);
      },
    });
    this.job = opened.job;
    this.ring = opened.ring;
  }

  private wake(): void {
    const w = this.spaceWaiter;
    this.spaceWaiter = null;
    w?.();
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
        await new Promise<void>((resolve) => (this.spaceWaiter = resolve));
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
