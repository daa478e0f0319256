// soci builds SOCI zTOCs (github.com/awslabs/soci-snapshotter/ztoc) over gzip layer blobs, which
// stay in the registry unchanged, and prints what a lazy reader learns from a zTOC. For
// benchmarks/peers.sh.
//
//	soci build SPAN OUTDIR LAYER...   writes OUTDIR/0.ztoc, 1.ztoc, ... (SPAN: uncompressed bytes, 4 MiB in soci's CLI)
//	soci index ZTOC                   JSON: zTOC bytes, spans (compressed range, uncompressed start), files
//	soci extract ZTOC LAYER PATH      a file's bytes, decompressed from the compressed range of the
//	                                  spans that cover it (what the simulation counts as fetched)
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"ocichunk.dev/benchmarks/peers/internal/peerio"
	"os"
	"path/filepath"
	"strconv"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
)

func die(err error) {
	peerio.Die("soci", err)
}

func build(span int64, outDir string, layers []string) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		die(err)
	}
	b := ztoc.NewBuilder("ocichunk-peers")
	for i, l := range layers {
		z, err := b.BuildZtoc(l, span)
		if err != nil {
			die(fmt.Errorf("%s: %w", l, err))
		}
		r, _, err := ztoc.Marshal(z)
		if err != nil {
			die(err)
		}
		if err := peerio.WriteFile(filepath.Join(outDir, strconv.Itoa(i)+".ztoc"), r); err != nil {
			die(err)
		}
	}
}

func load(path string) (*ztoc.Ztoc, compression.Zinfo, int64) {
	raw, err := os.ReadFile(path)
	if err != nil {
		die(err)
	}
	z, err := ztoc.Unmarshal(bytes.NewReader(raw))
	if err != nil {
		die(err)
	}
	zi, err := z.Zinfo()
	if err != nil {
		die(err)
	}
	return z, zi, int64(len(raw))
}

type file struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Link   string `json:"link,omitempty"`
	Offset int64  `json:"offset"` // in the uncompressed tar
	Size   int64  `json:"size"`
}

func index(path string) {
	z, zi, n := load(path)
	defer zi.Close()
	var cstart, cend, ustart []int64
	for s := compression.SpanID(0); s <= zi.MaxSpanID(); s++ {
		cstart = append(cstart, int64(zi.StartCompressedOffset(s)))
		cend = append(cend, int64(zi.EndCompressedOffset(s, z.CompressedArchiveSize)))
		ustart = append(ustart, int64(zi.StartUncompressedOffset(s)))
	}
	files := []file{}
	for _, m := range z.FileMetadata {
		files = append(files, file{m.Name, m.Type, m.Linkname, int64(m.UncompressedOffset), int64(m.UncompressedSize)})
	}
	out := map[string]any{
		"ztocBytes": n, "checkpointBytes": len(z.Checkpoints), "spanSize": int64(zi.SpanSize()), "spans": len(cstart),
		"compressedSize": int64(z.CompressedArchiveSize), "uncompressedSize": int64(z.UncompressedArchiveSize),
		"spanCompressedStart": cstart, "spanCompressedEnd": cend, "spanUncompressedStart": ustart, "files": files,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		die(err)
	}
}

func extract(ztocPath, layer, name string) {
	z, zi, _ := load(ztocPath)
	defer zi.Close()
	m, err := z.GetMetadataEntry(name)
	if err != nil {
		die(err)
	}
	if m.UncompressedSize == 0 {
		return
	}
	f, err := os.Open(layer)
	if err != nil {
		die(err)
	}
	defer f.Close()
	first := zi.UncompressedOffsetToSpanID(m.UncompressedOffset)
	last := zi.UncompressedOffsetToSpanID(m.UncompressedOffset + m.UncompressedSize - 1)
	start, end := zi.StartCompressedOffset(first), zi.EndCompressedOffset(last, z.CompressedArchiveSize)
	buf := make([]byte, end-start)
	if _, err := f.ReadAt(buf, int64(start)); err != nil {
		die(err)
	}
	data, err := zi.ExtractDataFromBuffer(buf, m.UncompressedSize, m.UncompressedOffset, first)
	if err != nil {
		die(err)
	}
	os.Stdout.Write(data)
}

func main() {
	a := os.Args[1:]
	switch {
	case len(a) >= 4 && a[0] == "build":
		span, err := strconv.ParseInt(a[1], 10, 64)
		if err != nil {
			die(err)
		}
		build(span, a[2], a[3:])
	case len(a) == 2 && a[0] == "index":
		index(a[1])
	case len(a) == 4 && a[0] == "extract":
		extract(a[1], a[2], a[3])
	default:
		fmt.Fprintln(os.Stderr, "usage: soci build SPAN OUTDIR LAYER... | index ZTOC | extract ZTOC LAYER PATH")
		os.Exit(2)
	}
}
