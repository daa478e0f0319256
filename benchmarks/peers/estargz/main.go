// estargz converts layer blobs (gzip, zstd or plain tar) into eStargz or zstd:chunked blobs with
// github.com/containerd/stargz-snapshotter/estargz (library defaults: 4 MiB chunks, gzip level 9 for
// eStargz, zstd level 3 for zstd:chunked, one gzip/zstd stream per file or chunk), and prints what a
// lazy reader learns from a blob's own TOC. For benchmarks/peers.sh.
//
//	estargz convert estargz|zstdchunked OUTDIR LAYER...   writes OUTDIR/0.blob, 1.blob, ...
//	estargz index estargz|zstdchunked BLOB                 JSON: blob and TOC bytes, files and chunks
//	estargz extract estargz|zstdchunked BLOB PATH           a file's bytes, read through the chunk
//	                                                       ranges the index names (the simulation's)
package main

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"ocichunk.dev/benchmarks/peers/internal/peerio"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
)

func die(err error) {
	peerio.Die("estargz", err)
}

func section(path string) (*os.File, *io.SectionReader) {
	f, err := os.Open(path)
	if err != nil {
		die(err)
	}
	st, err := f.Stat()
	if err != nil {
		die(err)
	}
	return f, io.NewSectionReader(f, 0, st.Size())
}

// zstd:chunked as estargz.Build takes it (the package's compressor and decompressor together)
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

func convert(format, outDir string, layers []string) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		die(err)
	}
	for i, l := range layers {
		f, sr := section(l)
		var opts []estargz.Option
		if format == "zstdchunked" {
			opts = append(opts, estargz.WithCompression(zstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault}, &zstdchunked.Decompressor{}}))
		}
		blob, err := estargz.Build(sr, opts...)
		if err != nil {
			die(fmt.Errorf("%s: %w", l, err))
		}
		if err := peerio.WriteFile(filepath.Join(outDir, strconv.Itoa(i)+".blob"), blob); err != nil {
			die(err)
		}
		if err := blob.Close(); err != nil {
			die(err)
		}
		f.Close()
	}
}

func open(format, path string) (*os.File, *io.SectionReader, *estargz.Reader, int64) {
	f, sr := section(path)
	var openOpts []estargz.OpenOption
	var tocOffset int64
	if format == "zstdchunked" {
		d := new(zstdchunked.Decompressor)
		openOpts = append(openOpts, estargz.WithDecompressors(d))
		footer := make([]byte, d.FooterSize())
		if _, err := sr.ReadAt(footer, sr.Size()-int64(len(footer))); err != nil {
			die(err)
		}
		_, off, _, err := d.ParseFooter(footer)
		if err != nil {
			die(err)
		}
		tocOffset = off
	} else {
		off, _, err := estargz.OpenFooter(sr)
		if err != nil {
			die(err)
		}
		tocOffset = off
	}
	r, err := estargz.Open(sr, openOpts...)
	if err != nil {
		die(fmt.Errorf("%s: %w", path, err))
	}
	return f, sr, r, tocOffset
}

type chunk struct {
	Offset      int64 `json:"offset"`      // in the file (uncompressed)
	Size        int64 `json:"size"`        // uncompressed
	CompOffset  int64 `json:"compOffset"`  // where its gzip/zstd stream starts in the blob
	CompEnd     int64 `json:"compEnd"`     // where the next stream starts (what a reader fetches)
	InnerOffset int64 `json:"innerOffset"` // offset of its bytes in the decompressed stream
}

type file struct {
	Path   string  `json:"path"`
	Size   int64   `json:"size"`
	Chunks []chunk `json:"chunks"`
}

func index(format, path string) {
	f, sr, r, tocOffset := open(format, path)
	defer f.Close()
	files := []file{}
	var walk func(dir string, e *estargz.TOCEntry)
	walk = func(dir string, e *estargz.TOCEntry) {
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			p := dir + "/" + base
			switch c.Type {
			case "dir":
				walk(p, c)
			case "reg", "hardlink":
				src, ok := r.Lookup(p) // hardlinks resolve to their target's entry
				if !ok || src.Type != "reg" {
					break
				}
				fl := file{Path: p, Size: src.Size, Chunks: []chunk{}}
				for off := int64(0); off < src.Size; {
					ce, ok := r.ChunkEntryForOffset(p, off)
					if !ok {
						die(fmt.Errorf("%s: no chunk at %d", p, off))
					}
					fl.Chunks = append(fl.Chunks, chunk{ce.ChunkOffset, ce.ChunkSize, ce.Offset, ce.NextOffset(), ce.InnerOffset})
					off = ce.ChunkOffset + ce.ChunkSize
				}
				files = append(files, fl)
			}
			return true
		})
	}
	root, ok := r.Lookup("")
	if !ok {
		die(fmt.Errorf("%s: no root", path))
	}
	walk("", root)
	out := map[string]any{"blobBytes": sr.Size(), "tocOffset": tocOffset, "tocBytes": sr.Size() - tocOffset, "files": files}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		die(err)
	}
}

// extract writes a file's bytes decompressed from the blob ranges the index gives its chunks
// ([compOffset, compEnd), what the simulation counts as fetched), read alone: no other byte of
// the blob is read.
func extract(format, path, name string) {
	f, sr, r, _ := open(format, path)
	defer f.Close()
	ent, ok := r.Lookup(name)
	if !ok || ent.Type != "reg" {
		die(fmt.Errorf("%s: not a regular file", name))
	}
	for off := int64(0); off < ent.Size; {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			die(fmt.Errorf("%s: no chunk at %d", name, off))
		}
		raw := io.NewSectionReader(sr, ce.Offset, ce.NextOffset()-ce.Offset)
		var dec io.Reader
		if format == "zstdchunked" {
			z, err := zstd.NewReader(raw)
			if err != nil {
				die(err)
			}
			defer z.Close()
			dec = z
		} else {
			g, err := gzip.NewReader(raw)
			if err != nil {
				die(err)
			}
			dec = g
		}
		if _, err := io.CopyN(io.Discard, dec, ce.InnerOffset); err != nil {
			die(err)
		}
		if _, err := io.CopyN(os.Stdout, dec, ce.ChunkSize); err != nil {
			die(fmt.Errorf("%s chunk at %d: %w", name, off, err))
		}
		off = ce.ChunkOffset + ce.ChunkSize
	}
}

func main() {
	a := os.Args[1:]
	if len(a) < 3 || (a[1] != "estargz" && a[1] != "zstdchunked") {
		fmt.Fprintln(os.Stderr, "usage: estargz convert|index|extract estargz|zstdchunked ...")
		os.Exit(2)
	}
	switch a[0] {
	case "convert":
		convert(a[1], a[2], a[3:])
	case "index":
		index(a[1], a[2])
	case "extract":
		extract(a[1], a[2], a[3])
	default:
		die(fmt.Errorf("unknown command %s", a[0]))
	}
}
