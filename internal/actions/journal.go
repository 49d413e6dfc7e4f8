package actions

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// journalFile is the node's own record of the requests it started, in
// the state directory.
const journalFile = "actions.journal"

// journal is the node's durable record of every request it started: a
// line is fsynced before the handler starts, and kept until the request
// can no longer be replayed (its deadline, or its reply's life, plus a
// margin). A request whose id is in it never runs again, whatever etcd
// holds. Without a state directory the journal lives in memory only.
type journal struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	started map[string]time.Time // id -> kept until
}

// journalEntry is one line of the journal.
type journalEntry struct {
	ID    string    `json:"id"`
	Until time.Time `json:"until"`
}

// openJournal reads the journal in dir, dropping the entries past their
// time (the file is rewritten without them), and opens it for appending.
func openJournal(dir string, now time.Time) (*journal, error) {
	j := &journal{started: map[string]time.Time{}}
	if dir == "" {
		return j, nil
	}
	j.path = filepath.Join(dir, journalFile)
	f, err := os.Open(j.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("actions journal: %w", err)
	}
	expired := 0
	if f != nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e journalEntry
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.ID == "" {
				continue // a line torn by a crash: its handler never started
			}
			if now.After(e.Until) {
				expired++
				continue
			}
			j.started[e.ID] = e.Until
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("actions journal %s: %w", j.path, err)
		}
	}
	if expired > 0 {
		if err := j.rewrite(); err != nil {
			return nil, err
		}
	}
	j.f, err = os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("actions journal: %w", err)
	}
	return j, nil
}

// rewrite replaces the file with the entries kept, atomically.
func (j *journal) rewrite() error {
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("actions journal: %w", err)
	}
	w := bufio.NewWriter(f)
	for id, until := range j.started {
		line, _ := json.Marshal(journalEntry{ID: id, Until: until})
		_, _ = w.Write(append(line, '\n'))
	}
	err = w.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("actions journal: %w", err)
	}
	return syncDir(filepath.Dir(j.path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// has reports whether the journal holds a request: it started once.
func (j *journal) has(id string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.started[id]
	return ok
}

// record adds a request about to start, durably, and reports false if it
// was there already: the one place that decides a request runs at most
// once on this node.
func (j *journal) record(id string, until time.Time) (bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.started[id]; ok {
		return false, nil
	}
	if j.f != nil {
		line, _ := json.Marshal(journalEntry{ID: id, Until: until})
		_, err := j.f.Write(append(line, '\n'))
		if err == nil {
			err = j.f.Sync()
		}
		if err != nil {
			return false, fmt.Errorf("record the start in %s: %w", j.path, err)
		}
	}
	j.started[id] = until
	return true, nil
}

func (j *journal) close() {
	if j.f != nil {
		j.f.Close()
	}
}
