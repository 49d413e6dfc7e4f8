package applier

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
)

// adoptedDir holds, in the state directory, the originals of files that a
// configuration took over: ccm never deletes a file it did not create.
const adoptedDir = "adopted"

// original is a file as it was before a configuration adopted it.
type original struct {
	Path    string      `json:"path"`
	Content []byte      `json:"content"`
	Mode    fs.FileMode `json:"mode"`
	UID     int         `json:"uid"`
	GID     int         `json:"gid"`
}

func adoptedPath(p string) string {
	sum := sha256.Sum256([]byte(p))
	return path.Join(adoptedDir, hex.EncodeToString(sum[:16])+".json")
}

// loadManifests reads every manifest of the state directory once, so that
// listed knows every file ccm wrote: an existing file it does not list is
// adopted.
func (a *Applier) loadManifests() {
	if a.allLoaded {
		return
	}
	entries, _ := a.state.readDir(manifestDir)
	for _, e := range entries {
		if n, ok := cutJSON(e); ok {
			_, _ = a.loadManifest(n) // a broken one fails its configuration
		}
	}
	a.allLoaded = a.state != nil
}

// loadOriginal returns the original of an adopted file, or nil.
func (a *Applier) loadOriginal(p string) (*original, error) {
	raw, err := a.state.readFile(adoptedPath(p))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	o := &original{}
	if err := json.Unmarshal(raw, o); err != nil || o.Path != p {
		return nil, fmt.Errorf("state: %s is not the original of %s", a.state.name(adoptedPath(p)), p)
	}
	return o, nil
}

// saveOriginals keeps, durably, the originals of the files p adopts
// before anything replaces them.
func (a *Applier) saveOriginals(p *Plan) error {
	for _, c := range p.Changes {
		if c.Action != Adopt || c.dropOld {
			continue // an oversized original is replaced, not kept
		}
		if o, err := a.loadOriginal(c.Path); err != nil || o != nil {
			continue // the first original is the one to keep
		}
		o := original{Path: c.Path, Content: c.Old, Mode: c.old.mode, UID: c.old.uid, GID: c.old.gid}
		if err := a.writeState(adoptedPath(c.Path), o); err != nil {
			return fmt.Errorf("original of %s: %w", c.Path, err)
		}
	}
	return nil
}

// dropOriginals forgets the originals p put back.
func (a *Applier) dropOriginals(p *Plan) error {
	for _, c := range p.Changes {
		if c.Action == Restore {
			if err := a.state.remove(adoptedPath(c.Path)); err != nil {
				return fmt.Errorf("state: %w", err)
			}
		}
	}
	return nil
}
