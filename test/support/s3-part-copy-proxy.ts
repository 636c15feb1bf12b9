/**
 * A proxy in front of s3rver that adds the one S3 call s3rver lacks,
 * UploadPartCopy (a part of a multipart upload copied from a byte range of
 * another object): it reads the range from s3rver (GetObject with Range) and
 * uploads it as that part (UploadPart), so the bytes and the ETags are
 * s3rver's own. Every other request passes through unchanged (the Host header
 * included, so the client's signatures still verify).
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { GetObjectCommand, S3Client, UploadPartCommand } from "@aws-sdk/client-s3";

export interface PartCopy {
  source: string;
  range: string;
  partNumber: number;
}

export interface PartCopyProxy {
  endpoint: string;
  /** The UploadPartCopy calls served, in order. */
  copies: PartCopy[];
  /** Answers this part number's copy with a 500 (a server failing mid-copy). */
  failPart: number | null;
  close(): Promise<void>;
}

export async function startPartCopyProxy(upstream: string, credentials: { accessKeyId: string; secretAccessKey: string }): Promise<PartCopyProxy> {
  const up = new URL(upstream);
  const s3 = new S3Client({ endpoint: upstream, credentials, region: "us-east-1", forcePathStyle: true });
  const proxy: PartCopyProxy = { endpoint: "", copies: [], failPart: null, close: async () => undefined };

  const copyPart = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    for await (const _ of req); // no body
    const [bucket, ...key] = url.pathname.slice(1).split("/").map(decodeURIComponent);
    const [srcBucket, ...srcKey] = decodeURIComponent(String(req.headers["x-amz-copy-source"])).replace(/^\//, "").split("/");
    const range = String(req.headers["x-amz-copy-source-range"]);
    const partNumber = Number(url.searchParams.get("partNumber"));
    proxy.copies.push({ source: `${srcBucket}/${srcKey.join("/")}`, range, partNumber });
    if (partNumber === proxy.failPart) {
      res.writeHead(500, { "content-type": "application/xml" }).end("<Error><Code>InternalError</Code><Message>injected</Message></Error>");
      return;
    }
    const got = await s3.send(new GetObjectCommand({ Bucket: srcBucket, Key: srcKey.join("/"), Range: range }));
    const body = await got.Body!.transformToByteArray();
    const part = await s3.send(
      new UploadPartCommand({ Bucket: bucket, Key: key.join("/"), UploadId: url.searchParams.get("uploadId")!, PartNumber: partNumber, Body: body }),
    );
    res
      .writeHead(200, { "content-type": "application/xml" })
      .end(`<?xml version="1.0" encoding="UTF-8"?><CopyPartResult><LastModified>${new Date().toISOString()}</LastModified><ETag>${part.ETag}</ETag></CopyPartResult>`);
  };

  const server = createServer((req, res) => {
    const url = new URL(req.url!, "http://proxy");
    if (req.method === "PUT" && url.searchParams.has("uploadId") && req.headers["x-amz-copy-source"]) {
      copyPart(req, res, url).catch((err: Error) => res.writeHead(500).end(err.message));
      return;
    }
    const fwd = request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode!, r.headers);
      r.pipe(res);
    });
    fwd.on("error", (err) => res.writeHead(502).end(err.message));
    req.pipe(fwd);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy.close = async () => {
    s3.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return proxy;
}
