/**
 * Where the SDK's data-plane requests go. @superserve/sdk 0.8.1 derives its
 * data-plane host from the control plane's URL and, for any base URL it
 * does not know (a stand-in, a private deployment), falls back to the
 * public shared host `https://sandbox.superserve.ai` with the sandbox id in
 * a header; it has no option for that host. So a base-URL override needs
 * a data-plane override too: like `curl --connect-to`, requests the SDK
 * addresses to its data-plane origin are sent to another origin, path,
 * query, headers and body unchanged. Only that origin is touched; the SDK
 * itself is not changed. Installed once per process on the global fetch
 * (the SDK's only transport).
 */
import { resolveConfig } from "@superserve/sdk";

const routes = new Map<string, string>();
let original: typeof fetch | undefined;

/** The data-plane origin the SDK uses for this API key and base URL (its shared sandbox host). */
export function sdkDataPlaneOrigin(apiKey: string, baseUrl: string | undefined): string {
  const { sandboxHost } = resolveConfig({ apiKey, ...(baseUrl ? { baseUrl } : {}) });
  return `https://${sandboxHost.toLowerCase()}`;
}

function rewrite(input: string): string | undefined {
  if (routes.size === 0) return undefined;
  let url: URL;
  try {
    url = new URL(input);
  } catch {
    return undefined;
  }
  const target = routes.get(url.origin);
  return target === undefined ? undefined : `${target}${url.pathname}${url.search}`;
}

/** Sends the SDK's requests for `from` (an origin) to `to` (an origin, e.g. http://127.0.0.1:8081). */
export function routeDataPlane(from: string, to: string): void {
  routes.set(new URL(from).origin, new URL(to).origin);
  if (original) return;
  const base = globalThis.fetch;
  original = base;
  globalThis.fetch = ((input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]) => {
    if (typeof input === "string" || input instanceof URL) {
      const target = rewrite(String(input));
      if (target !== undefined) return base(target, init);
    }
    return base(input, init);
  }) as typeof fetch;
}
