/** The kubeconfig that points kubectl and client libraries at a stand-in. */
import { writeFile, rename } from "node:fs/promises";

export const CONTEXT_NAME = "sandqueue-standin";

/** `caPem`: the server's CA (certificate-authority-data); null for a plain-HTTP server. */
export function kubeconfigYaml(server: string, token: string | null, namespace: string, caPem: string | null): string {
  const user = token === null ? "  user: {}" : `  user:\n    token: ${token}`;
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- cluster:",
    ...(caPem === null ? [] : [`    certificate-authority-data: ${Buffer.from(caPem).toString("base64")}`]),
    `    server: ${server}`,
    `  name: ${CONTEXT_NAME}`,
    "contexts:",
    "- context:",
    `    cluster: ${CONTEXT_NAME}`,
    `    namespace: ${namespace}`,
    `    user: ${CONTEXT_NAME}`,
    `  name: ${CONTEXT_NAME}`,
    `current-context: ${CONTEXT_NAME}`,
    "preferences: {}",
    "users:",
    `- name: ${CONTEXT_NAME}`,
    user,
    "",
  ].join("\n");
}

/** Written whole or not at all (a reader never sees half a file); mode 0600: it holds the token. */
export async function writeKubeconfig(file: string, yaml: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, yaml, { mode: 0o600 });
  await rename(tmp, file);
}
