package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// An import updates a site with no uplink from a USB stick: the operator's
// signed bundle (shoal provision create) carries a git bundle of the fleet
// repo and the artifacts it names. `shoal relay import` checks the bundle
// and writes into the relay's state dir — the git bundle's refs into the
// mirror, each artifact into the cache (hashed, temp, fsync, rename) — then
// leaves import.json, which a running relay notices within seconds: it
// reads the new commit's artifacts and pokes all its devices, which fetch
// the new commit from the mirror and its artifacts from the cache.

// Importer writes a bundle's parts into a relay's state dir.
type Importer struct {
	stateDir string
	mirror   *mirror
}

// NewImporter opens the state dir of an enrolled relay for an import;
// fleetURL and branch are the relay's --fleet and --fleet-branch.
func NewImporter(stateDir, fleetURL, branch string) (*Importer, error) {
	if _, err := loadIdentity(stateDir); err != nil {
		return nil, err
	}
	m, err := newMirror(stateDir, MirrorOptions{URL: fleetURL, Branch: branch})
	if err != nil {
		return nil, err
	}
	for _, d := range []string{filepath.Join(stateDir, "cache", "tmp"), filepath.Join(stateDir, "cache", "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	return &Importer{stateDir: stateDir, mirror: m}, nil
}

// Git fetches every branch and tag of the git bundle at path into the mirror.
func (im *Importer) Git(ctx context.Context, path string) error {
	if err := im.mirror.importBundle(ctx, path); err != nil {
		return fmt.Errorf("import git bundle: %w", err)
	}
	return nil
}

// Artifact stores r in the cache if its sha256 is sha.
func (im *Importer) Artifact(r io.Reader, sha string) error {
	if !hexRE.MatchString(sha) {
		return fmt.Errorf("import artifact: sha256 %q", sha)
	}
	dir := filepath.Join(im.stateDir, "cache")
	tmp, err := os.CreateTemp(filepath.Join(dir, "tmp"), "import-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(tmp, h), r, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("import artifact %s: %w", sha[:12], err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("import artifact: %w: %s hashes to %s", errArtifactVerify, sha[:12], got[:12])
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "sha256", sha)); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Join(dir, "sha256"))
}

// Done records the import for a running relay and returns the mirror's commit.
func (im *Importer) Done() (string, error) {
	commit := im.mirror.status().commit
	b, _ := json.Marshal(importMark{Version: 1, Commit: commit, Time: time.Now().UTC()})
	return commit, atomicfile.WriteFile(filepath.Join(im.stateDir, "import.json"), b, 0o600)
}

type importMark struct {
	Version int       `json:"version"`
	Commit  string    `json:"commit"`
	Time    time.Time `json:"time"`
}

// importLoop notices an import into the state dir: the mirror is read
// again, the cache takes the new files, and every device is poked.
func (r *Relay) importLoop(ctx context.Context) {
	p := filepath.Join(r.o.StateDir, "import.json")
	var last time.Time
	if fi, err := os.Stat(p); err == nil {
		last = fi.ModTime()
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(p)
		if err != nil || !fi.ModTime().After(last) {
			continue
		}
		last = fi.ModTime()
		n := r.cache.rescan()
		commit := ""
		if r.mirror != nil {
			r.mirror.refreshState("")
			r.reindex()
			commit = r.mirror.status().commit
		}
		r.log.Info("bundle imported; poking devices", "commit", commit, "artifacts", n)
		if err := r.pokes.localPokeAll(commit, api.ReasonRelayImport, r.o.Now()); err != nil {
			r.log.Error("poke devices", "err", err)
		}
	}
}

// rescan takes files an import added to the cache directory; it returns
// how many. They are hashed before their first serve, as at start.
func (c *cache) rescan() int {
	ents, err := os.ReadDir(filepath.Join(c.dir, "sha256"))
	if err != nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range ents {
		if _, ok := c.items[e.Name()]; ok || !hexRE.MatchString(e.Name()) {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		c.items[e.Name()] = &cacheItem{size: fi.Size(), lastUse: time.Now()}
		c.bytes += fi.Size()
		n++
	}
	c.evictLocked("")
	c.gauge()
	return n
}
