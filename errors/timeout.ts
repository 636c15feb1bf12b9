/**
 * A promise that settles like `p`, or rejects once `ms` pass. Its timer is
 * cleared either way. `p` is not cancelled: callers that must stop the work
 * do so themselves. Lives beside the error model because producer/, worker/
 * and providers/ all bound waits on Redis and engines this way.
 */
export async function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error = () => new Error(`no answer within ${ms} ms`)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(onTimeout()), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
