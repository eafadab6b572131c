// tlogverify checks a rebuild audit log with golang.org/x/mod (an implementation rebuild
// did not write): the checkpoint's signed-note signature (note.Open), the tree rebuilt from
// the C2SP tiles (tlog.TileHashReader, tlog.TreeHash), every entry against its leaf hash,
// one inclusion proof made by rebuild (tlog.CheckRecord) and, given an earlier checkpoint
// and a consistency proof made by rebuild, tlog.CheckTree.
//
// Usage: tlogverify LOGDIR VERIFIERKEY PROOF [OLDCHECKPOINT CONSISTENCYPROOF]
// Exit 0 when everything checks; 1 with a message otherwise.
package main

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type tileDir struct{ dir string }

func (t tileDir) Height() int { return 8 }

// c2spPath maps x/mod's tile path (tile/8/L/N[.p/W], data tiles tile/8/data/N) to C2SP's
// (tile/L/N[.p/W], entry bundles tile/entries/N): C2SP leaves the height out.
func c2spPath(t tlog.Tile) string {
	p := strings.TrimPrefix(t.Path(), "tile/8/")
	p = strings.Replace(p, "data/", "entries/", 1)
	return "tile/" + p
}

func (t tileDir) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, tile := range tiles {
		data, err := os.ReadFile(filepath.Join(t.dir, c2spPath(tile)))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (t tileDir) SaveTiles([]tlog.Tile, [][]byte) {}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "tlogverify: "+format+"\n", args...)
	os.Exit(1)
}

func parseCheckpoint(text string) (string, int64, tlog.Hash) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 {
		fail("checkpoint: too few lines")
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("checkpoint root hash: %v", err)
	}
	var h tlog.Hash
	copy(h[:], raw)
	return lines[0], n, h
}

func openNote(path string, verifiers note.Verifiers) string {
	msg, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	n, err := note.Open(msg, verifiers)
	if err != nil {
		fail("%s: %v", path, err)
	}
	return n.Text
}

func readHashes(lines []string) []tlog.Hash {
	var out []tlog.Hash
	for _, line := range lines {
		if line == "" {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(raw) != tlog.HashSize {
			fail("proof hash %q", line)
		}
		var h tlog.Hash
		copy(h[:], raw)
		out = append(out, h)
	}
	return out
}

func main() {
	if len(os.Args) != 4 && len(os.Args) != 6 {
		fail("usage: tlogverify LOGDIR VERIFIERKEY PROOF [OLDCHECKPOINT CONSISTENCYPROOF]")
	}
	dir := os.Args[1]
	vkey, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("verifier key: %v", err)
	}
	verifiers := note.VerifierList(verifier)
	origin, n, root := parseCheckpoint(openNote(filepath.Join(dir, "checkpoint"), verifiers))
	tree := tlog.Tree{N: n, Hash: root}
	reader := tlog.TileHashReader(tree, tileDir{dir})
	got, err := tlog.TreeHash(n, reader)
	if err != nil || got != root {
		fail("tree of %d from the tiles: %v (root %v, checkpoint %v)", n, err, got, root)
	}
	// Every entry against its stored leaf hash (the data tiles read by tlog.ReadTileData).
	for start := int64(0); start < n; start += 256 {
		width := n - start
		if width > 256 {
			width = 256
		}
		tile := tlog.Tile{H: 8, L: -1, N: start / 256, W: int(width)}
		data, err := os.ReadFile(filepath.Join(dir, c2spPath(tile)))
		if err != nil {
			fail("%v", err)
		}
		indexes := make([]int64, width)
		for i := range indexes {
			indexes[i] = tlog.StoredHashIndex(0, start+int64(i))
		}
		hashes, err := reader.ReadHashes(indexes)
		if err != nil {
			fail("leaf hashes: %v", err)
		}
		for i := int64(0); i < width; i++ {
			if len(data) < 2 {
				fail("entry %d: truncated bundle", start+i)
			}
			size := int(binary.BigEndian.Uint16(data))
			if len(data) < 2+size {
				fail("entry %d: truncated bundle", start+i)
			}
			if tlog.RecordHash(data[2:2+size]) != hashes[i] {
				fail("entry %d does not match its leaf hash", start+i)
			}
			data = data[2+size:]
		}
	}
	// The inclusion proof rebuild made (C2SP tlog-proof: header, index, hashes, note).
	proofData, err := os.ReadFile(os.Args[3])
	if err != nil {
		fail("%v", err)
	}
	head, noteText, found := strings.Cut(string(proofData), "\n\n")
	if !found {
		fail("proof: no checkpoint")
	}
	lines := strings.Split(head, "\n")
	if lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "index ") {
		fail("proof: not a c2sp.org/tlog-proof@v1")
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "index "), 10, 64)
	if err != nil {
		fail("proof index: %v", err)
	}
	pnote, err := note.Open([]byte(noteText), verifiers)
	if err != nil {
		fail("proof checkpoint: %v", err)
	}
	_, pn, proot := parseCheckpoint(pnote.Text)
	leaf, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, index)})
	if err != nil {
		fail("leaf %d: %v", index, err)
	}
	if err := tlog.CheckRecord(readHashes(lines[2:]), pn, proot, index, leaf[0]); err != nil {
		fail("inclusion of entry %d: %v", index, err)
	}
	if len(os.Args) == 6 {
		_, oldN, oldRoot := parseCheckpoint(openNote(os.Args[4], verifiers))
		raw, err := os.ReadFile(os.Args[5])
		if err != nil {
			fail("%v", err)
		}
		proof := readHashes(strings.Split(string(raw), "\n"))
		if err := tlog.CheckTree(proof, n, root, oldN, oldRoot); err != nil {
			fail("consistency %d -> %d: %v", oldN, n, err)
		}
	}
	fmt.Printf("ok: %s, %d entries, root %s\n", origin, n, base64.StdEncoding.EncodeToString(root[:]))
}
