/** ocichunk's library API. Nothing here prints or exits; errors carry a stable `code`. */
export { convert, convertImage, DEFAULT_CHUNKER, type ConvertOptions, type ConvertResult, type ConvertProgress } from './convert/convert.js';
export { restore, restoreChunked, type RestoreOptions, type RestoreResult } from './restore/restore.js';
export { verify, type VerifyResult } from './verify.js';
export { inspect, inspectImage, inspectLayout, type ImageStats, type LayoutStats } from './inspect.js';
export { resolveImage, openChunked, type ResolvedImage, type ChunkedImage } from './chunked/image.js';
export { ChunkReader } from './chunked/content.js';
export { decodeToc, type Toc, type TocEntry } from './chunked/toc.js';
export { parseRef, openSource, openSink, type ImageRef, type TransportOptions } from './ref.js';
export { analyze, parseStrategies, DEFAULT_STRATEGIES, type AnalyzeOptions, type AnalyzeResult, type StrategyResult } from './analyze/analyze.js';
export { renderHtml } from './analyze/html.js';
export { RegistryClient, type RegistryOptions } from './registry/client.js';
export { lookupCredentials, type Credentials } from './registry/credentials.js';
export { OcichunkError, EXIT_CODES, type ErrorCode } from './errors.js';
export { CMT, ANN, FORMAT_VERSION } from './oci/chunked-media.js';
export { MT, parsePlatform, hostPlatform, type Platform, type Descriptor } from './oci/types.js';
export type { ImageSource, ImageSink, TransferReport } from './transports/types.js';
