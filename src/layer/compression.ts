/** What compression a blob really uses, from its first bytes (media types are not always right). */
export type SniffedCompression = 'gzip' | 'zstd' | 'none';

export function sniff(head: Buffer): SniffedCompression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}
