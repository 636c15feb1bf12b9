/**
 * `npm run standin -- kubernetes --kubeconfig FILE [options]`: starts a
 * stand-in service on 127.0.0.1, writes a kubeconfig pointing at it, prints
 * where it listens, and runs until SIGTERM or SIGINT (then releases every
 * sandbox and removes the kubeconfig it wrote).
 */
import { KubernetesStandin } from "./kubernetes/index.js";
import { parsePairs } from "../cli/args.js";
import { intOption, parseStandinArgs, portFlag, serveStandin } from "./serve-standin.js";
import { isSandqueueError } from "../errors/index.js";
import { runIsloStandin } from "./islo/cli.js";
import { runMicrosandboxStandin } from "./microsandbox/cli.js";
import { runProvisionerStandin } from "./provisioner/cli.js";
import { runSuperserveStandin } from "./superserve/cli.js";
import { runE2bStandin } from "./e2b/cli.js";
import { runNorthflankStandin } from "./northflank/cli.js";

const USAGE = `usage: npm run standin -- kubernetes --kubeconfig FILE [options]

  --kubeconfig FILE        write a kubeconfig for the stand-in here (required)
  --port N                 listen on 127.0.0.1:N (default: a free port)
  --namespace NS           create this namespace too, and make it the kubeconfig's (repeatable; first wins)
  --image IMAGE=LOCAL      run pods of container image IMAGE on local image LOCAL (repeatable)
  --default-image LOCAL    local image for other images (default host; "none": ErrImagePull)
  --memory-mb N            memory of pods without memory limits (default 512)
  --pids N                 pids limit of every pod (default 256)
  --exec-protocol P        serve only this exec subprotocol (v5.channel.k8s.io or v4.channel.k8s.io; repeatable)
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)
  --no-token               accept requests without a bearer token
  --no-tls                 plain HTTP instead of HTTPS with a self-signed certificate (kubectl then sends no token)`;

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [kind, ...rest] = argv;
  if (kind === "islo") return runIsloStandin(rest, env);
  if (kind === "microsandbox") return runMicrosandboxStandin(rest, env);
  if (kind === "provisioner") return runProvisionerStandin(rest, env);
  if (kind === "superserve") return runSuperserveStandin(rest, env);
  if (kind === "e2b") return runE2bStandin(rest, env);
  if (kind === "northflank") return runNorthflankStandin(rest, env);
  if (kind !== "kubernetes") {
    console.error(kind === undefined || kind === "--help" ? USAGE : `unknown stand-in '${kind}' (known: kubernetes, islo, microsandbox, provisioner, superserve, e2b, northflank)\n\n${USAGE}`);
    return kind === "--help" ? 0 : 2;
  }
  const values = parseStandinArgs(rest, {
    kubeconfig: { type: "string" },
    port: { type: "string" },
    namespace: { type: "string", multiple: true },
    image: { type: "string", multiple: true },
    "default-image": { type: "string" },
    "exec-protocol": { type: "string", multiple: true },
    "no-token": { type: "boolean" },
    "no-tls": { type: "boolean" },
  });
  return serveStandin({
    name: "kubernetes",
    usage: USAGE,
    flags: values,
    env,
    output: { flag: "kubeconfig", label: "kubeconfig", write: (standin: KubernetesStandin, file) => standin.writeKubeconfig(file, values.namespace?.[0] ?? "default") },
    start: (provider) => {
      const defaultImage = values["default-image"];
      return KubernetesStandin.start({
        provider,
        port: portFlag("port", values.port),
        ...(values["no-token"] ? { token: null } : {}),
        ...(values["no-tls"] ? { tls: false } : {}),
        namespaces: values.namespace ?? [],
        images: parsePairs("image", values.image),
        defaultImage: defaultImage === "none" ? null : (defaultImage ?? "host"),
        ...intOption("defaultMemoryMb", "memory-mb", values["memory-mb"], 1, 1024 * 1024),
        ...intOption("podPidsLimit", "pids", values.pids, 1, 4_000_000),
        ...(values["exec-protocol"] ? { execProtocols: values["exec-protocol"] } : {}),
      });
    },
    where: (standin) => `listening on ${standin.url}`,
    heading: "kubernetes stand-in",
    stopping: "releasing sandboxes",
  });
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(isSandqueueError(err) ? err.message : err);
    process.exitCode = isSandqueueError(err) ? 2 : 70;
  },
);
