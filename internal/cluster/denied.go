package cluster

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// deniedError is etcd's permission denied, with the role a command needs.
type deniedError struct {
	err  error
	need string
}

func (e *deniedError) Error() string {
	return e.err.Error() + ": this etcd identity needs " + e.need
}

func (e *deniedError) Unwrap() error { return e.err }

// deniedHint says which role would have been allowed when err is etcd's
// permission denied, so that no command stops at a bare "permission
// denied"; any other error is returned as it is.
func deniedHint(err error, need string) error {
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		return err
	}
	return &deniedError{err: err, need: need}
}
