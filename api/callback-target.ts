/**
 * Callback URLs: checked when a job is submitted (so a bad one is refused
 * with the request) and again at every delivery, through the connection's
 * own DNS lookup, so the address that is checked is the address that is
 * connected to (a name that resolves to a public address at submit time
 * and to 127.0.0.1 later is not followed).
 */
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { isIP } from "node:net";
import { ApiError, ErrorCodes } from "../errors/index.js";
import { addressProblem, type AddressClass } from "./address-policy.js";

function refused(message: string): ApiError {
  return new ApiError(ErrorCodes.CALLBACK_REFUSED, `callbackUrl: ${message}`, {
    details: { issues: [{ path: "callbackUrl", message }] },
  });
}

/** The URL's own problems (scheme, credentials), before any lookup. */
export function parseCallbackUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw refused("is not a URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw refused(`uses ${url.protocol}; expected http: or https:`);
  // Credentials in the URL would sit in Redis and in the queue UI.
  if (url.username || url.password) throw refused("carries credentials; authenticate the webhook by its signature instead");
  return url;
}

function hostOf(url: URL): string {
  return url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
}

/** Every address a host resolves to (an IP literal is itself). */
async function resolveAll(host: string): Promise<string[]> {
  if (isIP(host)) return [host];
  return new Promise((resolve, reject) =>
    dnsLookup(host, { all: true, verbatim: true }, (err, addrs) => (err ? reject(err) : resolve(addrs.map((a) => a.address)))),
  );
}

/** Refuses a callback URL whose host resolves to any address the policy refuses. */
export async function checkCallbackUrl(text: string, allow: readonly AddressClass[]): Promise<URL> {
  const url = parseCallbackUrl(text);
  const host = hostOf(url);
  let addresses: string[];
  try {
    addresses = await resolveAll(host);
  } catch (err) {
    throw refused(`host ${JSON.stringify(host)} does not resolve (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  for (const a of addresses) {
    const problem = addressProblem(a, allow);
    if (problem) throw refused(`host ${JSON.stringify(host)} resolves to ${problem}`);
  }
  return url;
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * A `lookup` for http.request that resolves as usual and fails the
 * connection when any resolved address is refused: node connects to what
 * this returns, so nothing unchecked is ever dialled.
 */
export function guardedLookup(allow: readonly AddressClass[]) {
  return (hostname: string, options: { all?: boolean; family?: number }, callback: LookupCallback): void => {
    dnsLookup(hostname, { all: true, verbatim: true }, (err, addrs) => {
      if (err) return callback(err, "");
      for (const a of addrs) {
        const problem = addressProblem(a.address, allow);
        if (problem) {
          const e = new Error(`callback host ${hostname} resolves to ${problem}`) as NodeJS.ErrnoException;
          e.code = "ECALLBACKREFUSED";
          return callback(e, "");
        }
      }
      const wanted = options.family ? addrs.filter((a) => a.family === options.family) : addrs;
      if (options.all) return callback(null, wanted);
      const first = wanted[0];
      if (!first) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: "ENOTFOUND" }), "");
      callback(null, first.address, first.family);
    });
  };
}

/** For an IP-literal host node skips `lookup`: check it here. */
export function literalHostProblem(url: URL, allow: readonly AddressClass[]): string | null {
  const host = hostOf(url);
  return isIP(host) ? addressProblem(host, allow) : null;
}
