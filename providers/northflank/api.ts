/**
 * The one @northflank/js-client ApiClient of a provider, and the two ways it
 * is used: REST calls with sandqueue's retry rules, and one command through
 * the SDK's exec session (its V1 exec WebSocket, one socket per command).
 *
 * - REST: the client is built with throwErrorOnHttpErrorCode, so a non-200
 *   answer throws NorthflankApiCallError with its status. 429, 5xx, network
 *   failures and attempts past `requestTimeoutMs` are retried with backoff
 *   (429 waits RATE_LIMIT_WAIT_MS: the SDK surfaces no Retry-After);
 *   401/403 never. The SDK's fetch takes no signal: a timed-out attempt is
 *   abandoned, not cancelled.
 * - exec: `execServiceSession` with `shell: "none"` (argv as given) and
 *   `encoding: "base64"` (the SDK's own file copy uses it: the service sends
 *   output base64-encoded and the SDK decodes it into bytes). Stdin, when
 *   given, goes the same way, then ends. The session has no public close; ending a command early is the
 *   SDK's own teardown (`reset`, what it does on a socket error): the socket
 *   closes, and the service ends the command with it.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { ApiClient, ApiClientInMemoryContextProvider, type NorthflankExecCommand } from "@northflank/js-client";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { RATE_LIMIT_WAIT_MS, statusOf, translateError } from "./errors.js";

export interface NorthflankConnection {
  token: string;
  /** The API host (the SDK's context `host`); unset: the SDK's https://api.northflank.com. */
  baseUrl?: string;
  projectId: string;
  teamId?: string;
  /** Per REST attempt, ms. */
  requestTimeoutMs: number;
  /** Further attempts after a retryable failure. */
  retries: number;
  /** First backoff, ms (doubles per attempt). Default 250. */
  backoffMs?: number;
  /** Wait after a 429, ms. Default RATE_LIMIT_WAIT_MS. */
  rateLimitWaitMs?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** What a 404 means here. */
  notFound?: () => ProviderError;
  /** Statuses handed back to the caller as the SDK's own error (409 exists, 404 gone), never retried. */
  pass?: number[];
}

/** What one command through the exec socket gave. */
export interface SessionOutput {
  stdout: Buffer;
  stderr: Buffer;
  /** From the SDK's command result. */
  exitCode: number | null;
}

/** The SDK's exec session (its ExecCommand type is not exported). */
export type ExecSession = Awaited<ReturnType<NorthflankExecCommand["execServiceSession"]>>;

function aborted(what: string, signal: AbortSignal): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `northflank: ${what} aborted`, { retryable: true, cause: signal.reason });
}

/** Rejects when `signal` fires; `onAbort` runs first (teardown). */
function abortable<T>(p: Promise<T>, signal: AbortSignal, what: string, onAbort?: () => void): Promise<T> {
  if (signal.aborted) {
    onAbort?.();
    return Promise.reject(aborted(what, signal));
  }
  return new Promise<T>((resolve, reject) => {
    const stop = (): void => {
      onAbort?.();
      reject(aborted(what, signal));
    };
    signal.addEventListener("abort", stop, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", stop);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", stop);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** Ends a session's command early: the SDK's own teardown closes its socket. */
export function closeSession(session: ExecSession): void {
  (session as unknown as { reset?: () => void }).reset?.();
}

export class NorthflankApi {
  readonly client: ApiClient;
  /** The project parameters every call takes (with the team when one is set). */
  readonly project: { projectId: string } | { teamId: string; projectId: string };

  constructor(readonly conn: NorthflankConnection) {
    const contexts = new ApiClientInMemoryContextProvider();
    contexts.addContext({ name: "sandqueue", token: conn.token, ...(conn.baseUrl ? { host: conn.baseUrl.replace(/\/+$/, "") } : {}) });
    this.client = new ApiClient(contexts, { throwErrorOnHttpErrorCode: true });
    this.project = conn.teamId ? { teamId: conn.teamId, projectId: conn.projectId } : { projectId: conn.projectId };
  }

  /** A REST call with retries; `op` names it in errors ("delete service sq-…"). */
  async call<T>(op: string, fn: () => Promise<T>, opts: CallOptions = {}): Promise<T> {
    const { signal } = opts;
    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) throw aborted(op, signal);
      const timeout = AbortSignal.timeout(this.conn.requestTimeoutMs);
      try {
        return await abortable(fn(), signal ? AbortSignal.any([signal, timeout]) : timeout, op);
      } catch (err) {
        if (signal?.aborted) throw aborted(op, signal);
        const status = statusOf(err);
        if (status !== undefined && opts.pass?.includes(status)) throw err;
        const e = timeout.aborted ? new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `northflank: ${op}: no answer within ${this.conn.requestTimeoutMs} ms`, { retryable: true }) : translateError(err, op, opts.notFound);
        if (!e.retryable || attempt >= this.conn.retries) {
          if (!e.retryable || attempt === 0) throw e;
          throw new ProviderError(e.code, `${e.message} (after ${attempt + 1} attempts)`, { retryable: true, cause: err, ...(e.retryAfterMs === undefined ? {} : { retryAfterMs: e.retryAfterMs }) });
        }
        const base = e.code === ErrorCodes.PROVIDER_RATE_LIMITED ? (this.conn.rateLimitWaitMs ?? RATE_LIMIT_WAIT_MS) : (this.conn.backoffMs ?? 250) * 2 ** attempt;
        await sleep(base * (0.8 + Math.random() * 0.4), undefined, signal ? { signal } : {}).catch(() => undefined);
      }
    }
  }

  /**
   * Runs argv in a service's instance (any instance when none is named) and
   * waits for its end; `onStdout`/`onStderr` see output as it arrives. The
   * signal (or `timeoutMs`) closes the socket and rejects.
   */
  async session(
    serviceId: string,
    instanceName: string | undefined,
    argv: string[],
    opts: { timeoutMs: number; signal?: AbortSignal; stdin?: Buffer; onStdout?: (b: Buffer) => void; onStderr?: (b: Buffer) => void },
  ): Promise<SessionOutput> {
    const what = `exec in service ${serviceId}`;
    const timeout = AbortSignal.timeout(opts.timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const opening = this.client.exec.execServiceSession(
      { ...this.project, serviceId },
      { command: argv, shell: "none", encoding: "base64", tty: false, ...(instanceName ? { instanceName } : {}) },
    );
    // A session that opens after we gave up is closed at once.
    const session = await abortable(opening, signal, what, () => void opening.then(closeSession, () => undefined));
    const result = session.waitForCommandResult();
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const ended = (s: NodeJS.ReadableStream, keep: Buffer[], see?: (b: Buffer) => void): Promise<void> =>
      new Promise((resolve) => {
        s.on("data", (c: Buffer) => {
          keep.push(c);
          see?.(c);
        });
        s.once("end", () => resolve());
        s.once("close", () => resolve());
      });
    const streams = Promise.all([ended(session.stdOut, out, opts.onStdout), ended(session.stdErr, err, opts.onStderr)]);
    // In the session's encoding (base64), as the SDK's own file copy writes it; then end of input.
    if (opts.stdin?.length) session.stdIn.write(opts.stdin.toString("base64"));
    session.stdIn.end();
    try {
      const [r] = await abortable(Promise.all([result, streams]), signal, what, () => closeSession(session));
      return { stdout: Buffer.concat(out), stderr: Buffer.concat(err), exitCode: r.exitCode ?? null };
    } catch (e) {
      if (timeout.aborted && !opts.signal?.aborted) {
        throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `northflank: ${what}: no end within ${opts.timeoutMs} ms`, { retryable: true, cause: e });
      }
      throw e;
    }
  }
}
