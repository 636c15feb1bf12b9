export { aptMirror, buildImage, imageNameProblem, listImages, type BuildImageOptions, type BuiltImage, type ImageInfo } from "./build-image.js";
