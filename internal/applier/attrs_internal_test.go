package applier

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/configs"
)

// The attack review: a customer who owns a managed directory's parent
// renames their own executable in for the directory between ccm's look
// and its attribute fix (a drift repair they provoke with a chmod). ccm
// must refuse it, not make it setgid root. The swap is done before the
// call here: what the call opens is what a lost race hands it.
func TestADirectoryAttributeFixRefusesAFileSwappedIn(t *testing.T) {
	dir := t.TempDir()
	tr, err := openTree(dir, 0)
	require.NoError(t, err)
	exe := filepath.Join(dir, "shared")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	root := 0
	err = tr.setDirAttrs("shared", fs.ModeSetgid|0o755, configs.Ownership{GID: &root})
	require.Error(t, err)
	st, err := os.Stat(exe)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o755), st.Mode(), "no setgid bit on the customer's file")
}

// A file's attribute fix never changes an inode another name shares: a
// hard link would carry the change to the other file.
func TestAFileAttributeFixRefusesAHardLinkedInode(t *testing.T) {
	dir := t.TempDir()
	tr, err := openTree(dir, 0)
	require.NoError(t, err)
	victim := filepath.Join(dir, "victim")
	require.NoError(t, os.WriteFile(victim, []byte("secret\n"), 0o600))
	require.NoError(t, os.Link(victim, filepath.Join(dir, "managed")))
	require.Error(t, tr.setFileAttrs("managed", 0o755, configs.Ownership{}))
	st, err := os.Stat(victim)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o600), st.Mode())
}
