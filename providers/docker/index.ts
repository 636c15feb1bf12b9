export { DockerProvider, LABEL_HOST, LABEL_PID, LABEL_POOLED, type DockerProviderOptions } from "./docker-provider.js";
export { EngineClient, EngineHttpError, parseDockerHost, type EngineEndpoint } from "./engine-client.js";
export { translateEngineError, imageNotFound } from "./engine-errors.js";
export { FrameDecoder, encodeFrame } from "./stream-frames.js";
export type { WarmPoolOptions } from "../warm-pool.js";
