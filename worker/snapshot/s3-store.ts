/**
 * S3-compatible snapshot store (`s3://bucket/prefix`), AWS SDK v3.
 *
 * Configuration comes from the standard AWS environment (AWS_REGION,
 * AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or any other SDK credential source,
 * AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL). With a custom endpoint (MinIO,
 * s3rver, ...) path-style addressing is used unless AWS_S3_FORCE_PATH_STYLE
 * says "false".
 *
 * Atomicity: the id is only known once the last byte is hashed, so the tar
 * is first uploaded to <prefix>tmp/<uuid> - by multipart upload, which makes
 * the object appear only at CompleteMultipartUpload (small tars: one
 * PutObject) - then copied server-side to <prefix>sha256/<hex>.tar (a copy
 * also appears whole or not at all) and the temp object deleted. A crash
 * leaves either an incomplete multipart upload (invisible; abort it with a
 * bucket lifecycle rule, prune also aborts old ones) or a temp object that
 * prune removes. Memory per put: one part (8 MiB).
 */
import { randomUUID } from "node:crypto";
import type { Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  UploadPartCopyCommand,
  type CompletedPart,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { ConfigError, ErrorCodes, isSandqueueError } from "../../errors/index.js";
import { HashingPassThrough, VerifyingPassThrough } from "./hashing-streams.js";
import { hexOf, notFound, storeError, type PutResult, type SnapshotInfo, type SnapshotStore, removeSnapshotsOlderThan } from "./store.js";

const PART_BYTES = 8 * 1024 * 1024;
/** S3's limit for a single CopyObject; larger objects are copied part by part. */
const MAX_SINGLE_COPY = 5 * 1024 * 1024 * 1024;
const COPY_PART_BYTES = 512 * 1024 * 1024;
const STALE_TEMP_MS = 3_600_000;

export interface S3StoreOptions {
  /** Overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. */
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  credentials?: S3ClientConfig["credentials"];
  env?: Record<string, string | undefined>;
  /**
   * Objects above `maxSingleCopyBytes` (S3's CopyObject limit, 5 GiB) are
   * copied into place part by part (UploadPartCopy, `partBytes` each). For
   * servers with a lower limit, and for tests of the part-by-part path.
   */
  copy?: { maxSingleCopyBytes: number; partBytes: number };
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === "NoSuchKey" || e?.name === "NotFound" || e?.$metadata?.httpStatusCode === 404;
}

export class S3SnapshotStore implements SnapshotStore {
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly copyLimits: { maxSingleCopyBytes: number; partBytes: number };
  private closed = false;

  constructor(bucket: string, prefix: string, opts: S3StoreOptions = {}) {
    const env = opts.env ?? process.env;
    this.bucket = bucket;
    this.copyLimits = opts.copy ?? { maxSingleCopyBytes: MAX_SINGLE_COPY, partBytes: COPY_PART_BYTES };
    for (const [name, v] of Object.entries(this.copyLimits)) {
      if (!Number.isSafeInteger(v) || v <= 0) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `S3 store copy.${name} must be a positive integer of bytes (got ${v})`);
    }
    this.prefix = prefix === "" || prefix.endsWith("/") ? prefix : `${prefix}/`;
    const endpoint = opts.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
    const pathStyleEnv = env.AWS_S3_FORCE_PATH_STYLE;
    const config: S3ClientConfig = {
      region: opts.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? "us-east-1",
      forcePathStyle: opts.forcePathStyle ?? (pathStyleEnv !== undefined ? pathStyleEnv === "true" : endpoint !== undefined),
      // S3-compatible servers often reject the newer default checksum headers.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    };
    if (endpoint) config.endpoint = endpoint;
    if (opts.credentials) config.credentials = opts.credentials;
    this.client = new S3Client(config);
  }

  private keyOf(id: string): string {
    return `${this.prefix}sha256/${hexOf(id)}.tar`;
  }

  async put(tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<PutResult> {
    const signal = opts.signal;
    const tmpKey = `${this.prefix}tmp/${randomUUID()}`;
    const hasher = new HashingPassThrough();
    tar.on("error", (e) => hasher.destroy(e));
    tar.pipe(hasher);
    let uploadId: string | undefined;
    let tmpWritten = false;
    try {
      const parts: CompletedPart[] = [];
      let buf: Buffer[] = [];
      let bufBytes = 0;
      const flushPart = async () => {
        if (uploadId === undefined) {
          const r = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: tmpKey }), { abortSignal: signal });
          uploadId = r.UploadId!;
        }
        const PartNumber = parts.length + 1;
        const body = Buffer.concat(buf, bufBytes);
        buf = [];
        bufBytes = 0;
        const r = await this.client.send(
          new UploadPartCommand({ Bucket: this.bucket, Key: tmpKey, UploadId: uploadId, PartNumber, Body: body, ContentLength: body.length }),
          { abortSignal: signal },
        );
        parts.push({ PartNumber, ETag: r.ETag! });
      };
      for await (const chunk of hasher as AsyncIterable<Buffer>) {
        buf.push(chunk);
        bufBytes += chunk.length;
        if (bufBytes >= PART_BYTES) await flushPart();
      }
      if (uploadId === undefined) {
        const body = Buffer.concat(buf, bufBytes);
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: tmpKey, Body: body, ContentLength: body.length }), { abortSignal: signal });
      } else {
        if (bufBytes > 0) await flushPart();
        await this.client.send(
          new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: tmpKey, UploadId: uploadId, MultipartUpload: { Parts: parts } }),
          { abortSignal: signal },
        );
        uploadId = undefined;
      }
      tmpWritten = true;
      const id = await hasher.digestId();
      const key = this.keyOf(id);
      // Existing content: keep the stored object (same bytes by construction).
      if (!(await this.has(id))) await this.copy(tmpKey, key, hasher.bytes, signal);
      return { id, bytes: hasher.bytes };
    } catch (err) {
      // Stop the producer (packDir, an engine's archive): nobody reads it any more.
      if (!tar.destroyed) tar.destroy();
      if (isSandqueueError(err) || (err as Error).name === "AbortError") throw err;
      throw storeError("cannot upload a snapshot", err);
    } finally {
      if (uploadId !== undefined) {
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: tmpKey, UploadId: uploadId })).catch(() => {});
      }
      if (tmpWritten) await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: tmpKey })).catch(() => {});
    }
  }

  private async copy(from: string, to: string, size: number, signal?: AbortSignal): Promise<void> {
    const CopySource = `${this.bucket}/${from.split("/").map(encodeURIComponent).join("/")}`;
    const { maxSingleCopyBytes, partBytes } = this.copyLimits;
    if (size <= maxSingleCopyBytes) {
      await this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: to, CopySource }), { abortSignal: signal });
      return;
    }
    const { UploadId } = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: to }), { abortSignal: signal });
    try {
      const parts: CompletedPart[] = [];
      for (let start = 0, n = 1; start < size; start += partBytes, n++) {
        const end = Math.min(size, start + partBytes) - 1;
        const r = await this.client.send(
          new UploadPartCopyCommand({ Bucket: this.bucket, Key: to, UploadId, PartNumber: n, CopySource, CopySourceRange: `bytes=${start}-${end}` }),
          { abortSignal: signal },
        );
        parts.push({ PartNumber: n, ETag: r.CopyPartResult!.ETag! });
      }
      await this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: to, UploadId, MultipartUpload: { Parts: parts } }), {
        abortSignal: signal,
      });
    } catch (err) {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: to, UploadId })).catch(() => {});
      throw err;
    }
  }

  async get(id: string): Promise<Readable> {
    const key = this.keyOf(id);
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      const body = r.Body as Readable;
      const verify = new VerifyingPassThrough(id);
      body.on("error", (e) => verify.destroy(e));
      verify.on("close", () => body.destroy());
      return body.pipe(verify);
    } catch (err) {
      if (isNotFound(err)) throw notFound(id);
      throw storeError(`cannot read snapshot ${id}`, err);
    }
  }

  async has(id: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(id) }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw storeError(`cannot check snapshot ${id}`, err);
    }
  }

  private async listKeys(prefix: string): Promise<{ key: string; bytes: number; modified: Date }[]> {
    const out: { key: string; bytes: number; modified: Date }[] = [];
    let token: string | undefined;
    try {
      do {
        const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }));
        for (const o of r.Contents ?? []) out.push({ key: o.Key!, bytes: o.Size ?? 0, modified: o.LastModified ?? new Date(0) });
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      throw storeError("cannot list snapshots", err);
    }
    return out;
  }

  async list(): Promise<SnapshotInfo[]> {
    const base = `${this.prefix}sha256/`;
    const out: SnapshotInfo[] = [];
    for (const o of await this.listKeys(base)) {
      const m = /^([0-9a-f]{64})\.tar$/.exec(o.key.slice(base.length));
      if (m) out.push({ id: `sha256:${m[1]}`, bytes: o.bytes, createdAt: o.modified });
    }
    return out.sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.id.localeCompare(b.id));
  }

  async remove(id: string): Promise<boolean> {
    if (!(await this.has(id))) return false;
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyOf(id) }));
      return true;
    } catch (err) {
      throw storeError(`cannot remove snapshot ${id}`, err);
    }
  }

  async prune(olderThanMs: number): Promise<number> {
    const removed = await removeSnapshotsOlderThan(this, olderThanMs);
    const tempCutoff = Date.now() - Math.max(olderThanMs, STALE_TEMP_MS);
    for (const o of await this.listKeys(`${this.prefix}tmp/`)) {
      if (o.modified.getTime() < tempCutoff) await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: o.key })).catch(() => {});
    }
    try {
      const r = await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: `${this.prefix}tmp/` }));
      for (const u of r.Uploads ?? []) {
        if ((u.Initiated?.getTime() ?? 0) < tempCutoff) {
          await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key!, UploadId: u.UploadId! })).catch(() => {});
        }
      }
    } catch {
      // Not every S3-compatible server lists uploads; a lifecycle rule covers them.
    }
    return removed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
  }
}
