/**
 * Waiting for a sandbox pod to run, and reading why it does not: image
 * pull failures become IMAGE_NOT_FOUND, configuration failures
 * PROVIDER_FAILED, a pod still pending at the start timeout (scheduling,
 * slow pulls) PROVIDER_UNAVAILABLE, retryable.
 */
import type { CoreV1Api, V1ContainerStatus, V1Pod } from "@kubernetes/client-node";
import { ErrorCodes, ProviderError } from "../../errors/index.js";

/** Pull failures that mean the image is not there (as opposed to a registry hiccup, waited out). */
const IMAGE_MISSING = /not found|manifest unknown|does not exist|NotFound|repository .* not exist|pull access denied/i;

export function imageNotFound(image: string, why: string): ProviderError {
  return new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, `image "${image}" cannot be pulled by the cluster (${why}); push it, or map the job's image with SANDQUEUE_K8S_IMAGES`, {
    retryable: false,
    details: { image },
  });
}

export function containerStatus(pod: V1Pod): V1ContainerStatus | undefined {
  return pod.status?.containerStatuses?.[0];
}

/** Running, or an error to throw now, or null (keep waiting; `pending` says why). */
export function startState(pod: V1Pod, image: string): { running: true } | { error: ProviderError } | { running: false; pending: string } {
  const phase = pod.status?.phase ?? "Pending";
  const cs = containerStatus(pod);
  const name = pod.metadata?.name ?? "?";
  if (pod.metadata?.deletionTimestamp) {
    return { error: new ProviderError(ErrorCodes.PROVIDER_FAILED, `pod ${name} is being deleted before it ran`, { retryable: true }) };
  }
  if (phase === "Running" && cs?.state?.running) return { running: true };
  if (phase === "Failed" || phase === "Succeeded") {
    const why = [pod.status?.reason, pod.status?.message, cs?.state?.terminated?.reason].filter(Boolean).join(": ");
    return { error: new ProviderError(ErrorCodes.PROVIDER_FAILED, `pod ${name} ended (${phase}${why ? `, ${why}` : ""}) before it ran`, { retryable: true }) };
  }
  const waiting = cs?.state?.waiting;
  if (waiting?.reason === "InvalidImageName") return { error: imageNotFound(image, waiting.message ?? waiting.reason) };
  if ((waiting?.reason === "ErrImagePull" || waiting?.reason === "ImagePullBackOff") && IMAGE_MISSING.test(waiting.message ?? "")) {
    return { error: imageNotFound(image, waiting.message ?? waiting.reason) };
  }
  if (waiting?.reason === "CreateContainerConfigError" || waiting?.reason === "CreateContainerError" || waiting?.reason === "RunContainerError") {
    return {
      error: new ProviderError(ErrorCodes.PROVIDER_FAILED, `pod ${name} cannot start its container (${waiting.reason}: ${waiting.message ?? ""})`, {
        retryable: false,
      }),
    };
  }
  const unschedulable = pod.status?.conditions?.find((c) => c.type === "PodScheduled" && c.status === "False");
  const pending = waiting?.reason
    ? `${waiting.reason}${waiting.message ? `: ${waiting.message}` : ""}`
    : unschedulable
      ? `${unschedulable.reason ?? "Unschedulable"}: ${unschedulable.message ?? ""}`
      : phase;
  return { running: false, pending };
}

/**
 * Polls the pod until it runs (its current state), fails, or `timeoutMs`
 * passes. Starts fast (a pod on a warm node runs within milliseconds of
 * its create) and backs off to 100 ms.
 */
export async function waitRunning(
  core: CoreV1Api,
  namespace: string,
  name: string,
  image: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<V1Pod> {
  const deadline = performance.now() + timeoutMs;
  let pending = "Pending";
  for (let delay = 2; ; delay = Math.min(delay * 2, 100)) {
    if (signal?.aborted) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, "acquire aborted", { retryable: true, cause: signal.reason });
    const pod = await core.readNamespacedPod({ name, namespace });
    const state = startState(pod, image);
    if ("error" in state) throw state.error;
    if (state.running) return pod;
    pending = state.pending;
    if (performance.now() > deadline) {
      throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `pod ${name} is not running after ${timeoutMs} ms (${pending}); see kubectl describe pod`, {
        retryable: true,
      });
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}
