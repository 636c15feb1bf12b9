/**
 * pods/exec over WebSocket, the channel protocol of the kubelet
 * (k8s.io/apimachinery/pkg/util/httpstream/wsstream and
 * client-go/tools/remotecommand): binary messages `[channel][payload]`,
 * 0 stdin, 1 stdout, 2 stderr, 3 status (a metav1.Status: Success, or
 * Failure/NonZeroExitCode with the exit code as a cause), 4 resize;
 * `v5.channel.k8s.io` adds `[255, 0]`, the client's end of stdin.
 *
 * The local sandbox takes stdin whole and returns output when the command
 * ends, so:
 * - stdin is collected until the client closes it (v5) and the command
 *   then starts with it; v4 has no way to close stdin, so under v4 the
 *   command starts once the client has sent nothing for `v4StdinIdleMs`,
 *   and reads end-of-file after what came (a real v4 server never gives
 *   end-of-file: a command that waits for it never ends there);
 * - stdout and stderr are sent as the command writes them (frames of at
 *   most 64 KiB), then the status once it has ended, then a normal close.
 * Closing the WebSocket kills the command. A pod deleted or past its
 * deadline mid-exec ends it with exit code 137; a pod that vanishes
 * (fault injection) drops the connection without a status.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";
import type { Kubelet } from "./kubelet.js";
import type { FaultTable } from "./faults.js";
import type { Container, Pod } from "./pods.js";
import { notRunning } from "./pods.js";
import { badRequest, notFound, type Status } from "./status.js";
import { queryBool } from "./http-util.js";

export const V5 = "v5.channel.k8s.io";
export const V4 = "v4.channel.k8s.io";

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const STATUS = 3;
const CLOSE = 255;
const FRAME_BYTES = 64 * 1024;

export interface ExecOptions {
  /** Subprotocols served, in the server's order of preference. */
  protocols: readonly string[];
  v4StdinIdleMs: number;
  /** Stdin is held in memory until the command starts. */
  maxStdinBytes: number;
}

export interface ExecTarget {
  pod: Pod;
  container: Container;
  argv: string[];
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

/** Checks an exec request's parameters against the pod (before the upgrade: failures are plain HTTP Status answers). */
export function execTarget(pod: Pod | undefined, name: string, q: URLSearchParams, running: boolean): ExecTarget | Status {
  if (!pod) return notFound({ group: "", resource: "pods" }, name);
  const flags = ["stdin", "stdout", "stderr", "tty"].map((f) => queryBool(q, f));
  if (flags.some((f) => f === null)) return badRequest("stdin, stdout, stderr and tty must be true or false");
  const [stdin, stdout, stderr, tty] = flags as boolean[];
  if (!stdin && !stdout && !stderr) return badRequest("you must specify at least 1 of stdin, stdout, stderr");
  const argv = q.getAll("command");
  if (argv.length === 0) return badRequest("you must specify at least 1 command");
  const containerName = q.get("container");
  let container: Container | undefined;
  if (containerName) {
    container = pod.spec.containers.find((c) => c.name === containerName);
    if (!container) return badRequest(`container ${containerName} is not valid for pod ${pod.metadata.name}`);
  } else if (pod.spec.containers.length === 1) {
    container = pod.spec.containers[0];
  } else {
    return badRequest(
      `a container name must be specified for pod ${pod.metadata.name}, choose one of: [${pod.spec.containers.map((c) => c.name).join(" ")}]`,
    );
  }
  if (!running) return notRunning(pod);
  return { pod, container: container!, argv, stdin: stdin!, stdout: stdout!, stderr: stderr!, tty: tty! };
}

/** The subprotocol to speak: the client's first one that the server serves (wsstream's handshake), or null. */
export function negotiate(offered: string | undefined, served: readonly string[]): string | null {
  const list = (offered ?? "").split(",").map((p) => p.trim()).filter(Boolean);
  return list.find((p) => served.includes(p)) ?? null;
}

/** What channel 3 carries. The kubelet marshals a bare metav1.Status: no kind, apiVersion or code. */
function exitStatus(argv: readonly string[], exitCode: number): Record<string, unknown> {
  if (exitCode === 0) return { metadata: {}, status: "Success" };
  return {
    metadata: {},
    status: "Failure",
    message: `command terminated with non-zero exit code: error executing command [${argv.join(" ")}], exit code ${exitCode}`,
    reason: "NonZeroExitCode",
    details: { causes: [{ reason: "ExitCode", message: String(exitCode) }] },
  };
}

function errorStatus(message: string): Record<string, unknown> {
  return { metadata: {}, status: "Failure", message, reason: "InternalError", details: { causes: [{ message }] }, code: 500 };
}

function frame(channel: number, payload: Buffer | string): Buffer {
  const body = typeof payload === "string" ? Buffer.from(payload) : payload;
  return Buffer.concat([Buffer.from([channel]), body]);
}

export class ExecServer {
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();

  constructor(
    private readonly kubelet: Kubelet,
    private readonly faults: FaultTable,
    private readonly opts: ExecOptions,
  ) {
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: 16 * 1024 * 1024,
      // ws would otherwise answer with the client's first choice, served or not.
      handleProtocols: (offered) => negotiate([...offered].join(","), opts.protocols) ?? false,
    });
  }

  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, target: ExecTarget, protocol: string): void {
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.sockets.add(ws);
      ws.on("close", () => this.sockets.delete(ws));
      this.session(ws, target, protocol);
    });
  }

  private session(ws: WebSocket, t: ExecTarget, protocol: string): void {
    const abort = new AbortController();
    const chunks: Buffer[] = [];
    let stdinBytes = 0;
    let started = false;
    let idle: NodeJS.Timeout | null = null;

    const fail = (message: string) => {
      if (ws.readyState !== ws.OPEN) return;
      ws.send(frame(STATUS, JSON.stringify(errorStatus(message))));
      ws.close(1000);
    };
    const start = () => {
      if (started || abort.signal.aborted) return;
      started = true;
      if (idle) clearTimeout(idle);
      void this.run(ws, t, t.stdin ? Buffer.concat(chunks) : undefined, abort.signal).catch((err: Error) => fail(err.message));
    };
    const armIdle = () => {
      if (idle) clearTimeout(idle);
      idle = setTimeout(start, this.opts.v4StdinIdleMs);
    };

    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (!isBinary || data.length === 0) return;
      const channel = data[0]!;
      if (channel === STDIN && t.stdin && !started) {
        stdinBytes += data.length - 1;
        if (stdinBytes > this.opts.maxStdinBytes) {
          abort.abort("stdin too large");
          fail(`stdin is over the stand-in's buffer of ${this.opts.maxStdinBytes} bytes (it passes stdin to the sandbox whole)`);
          return;
        }
        chunks.push(data.subarray(1));
        if (protocol !== V5) armIdle();
      } else if (channel === CLOSE && protocol === V5 && data[1] === STDIN) {
        start();
      }
      // Resize (4) has nothing to act on without a terminal; other channels are not the client's to send.
    });
    ws.on("close", () => {
      if (idle) clearTimeout(idle);
      abort.abort("client closed the connection");
    });
    ws.on("error", () => abort.abort("connection error"));

    if (!t.stdin) start();
    else if (protocol !== V5) armIdle();
  }

  private async run(ws: WebSocket, t: ExecTarget, stdin: Buffer | undefined, signal: AbortSignal): Promise<void> {
    const { namespace = "", name } = t.pod.metadata;
    const vanish = this.faults.take({ verb: "exec", resource: "pods", namespace, name }, ["vanish"]);
    const timer = vanish?.type === "vanish" ? setTimeout(() => this.kubelet.vanish(namespace, name), vanish.afterMs) : null;
    try {
      // A terminal has one output: without one allocated here, stderr joins stdout as it would.
      const channelOf = (stream: "stdout" | "stderr"): number | null =>
        stream === "stdout" || t.tty ? (t.stdout ? STDOUT : null) : t.stderr ? STDERR : null;
      const onOutput = (stream: "stdout" | "stderr", bytes: Buffer): void => {
        const channel = channelOf(stream);
        if (channel === null || ws.readyState !== ws.OPEN) return;
        for (let i = 0; i < bytes.length; i += FRAME_BYTES) ws.send(frame(channel, bytes.subarray(i, i + FRAME_BYTES)));
      };
      const outcome = await this.kubelet.exec(namespace, name, { container: t.container, argv: t.argv, stdin, signal, onOutput });
      if (ws.readyState !== ws.OPEN) return;
      if (outcome.type === "lost") {
        ws.terminate();
        return;
      }
      if (outcome.type === "error") {
        ws.send(frame(STATUS, JSON.stringify(errorStatus(outcome.message))));
        ws.close(1000);
        return;
      }
      // The output went out as it was written (onOutput).
      ws.send(frame(STATUS, JSON.stringify(exitStatus(t.argv, outcome.exitCode))));
      ws.close(1000);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /** Drops every open exec connection (server shutdown). */
  closeAll(): void {
    for (const ws of this.sockets) ws.terminate();
    this.wss.close();
  }
}
